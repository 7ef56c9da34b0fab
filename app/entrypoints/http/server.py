"""``allocation serve``: the API as it runs in production, the same everywhere.

The Dockerfile's CMD, compose's ``api`` and the operator's docs all run this
command: uvicorn serving ``app.main:app`` with the connection limits of
app.entrypoints.http.connections, the service's log format from the first
line, and ``WEB_CONCURRENCY`` processes.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess

from app import logs, metrics
from app.config import Settings
from app.entrypoints.http.connections import GuardedHttpToolsProtocol, Limits

APP = "app.main:app"
# Seconds in-flight requests get to finish after SIGTERM: within a container's
# usual 10 s grace, and past DB_TIMEOUT, which bounds every request's waits.
GRACEFUL_SHUTDOWN = 8


def limits(settings: Settings) -> Limits:
    return Limits(
        max_header_bytes=settings.max_header_bytes,
        header_timeout=settings.header_timeout,
        max_connections=settings.max_connections,
    )


def serve(settings: Settings, host: str, port: int, workers: int) -> None:
    """Serve until SIGTERM or SIGINT; refuse, in one line, settings the API must not run with."""
    settings.check_api()
    protocol: Any = functools.partial(GuardedHttpToolsProtocol, limits=limits(settings))
    config = uvicorn.Config(
        APP,
        host=host,
        port=port,
        workers=workers,
        http=protocol,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        server_header=False,
        log_config=logs.uvicorn_config(settings.log_level, settings.log_format),
        access_log=False,  # the service logs one line per request itself
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
    )
    if workers == 1:
        server = uvicorn.Server(config)
        config.load_app()
        with contextlib.suppress(KeyboardInterrupt):
            server.run()
        if not server.started:
            raise SystemExit(STARTUP_FAILURE)
        return
    with metrics.shared_between_processes():
        supervisor = Multiprocess(config, sockets=[config.bind_socket()])
        with contextlib.suppress(KeyboardInterrupt):
            supervisor.run()
    # uvicorn's parent stops when a process fails to start, but exits 0.
    if any(p.process.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        raise SystemExit(STARTUP_FAILURE)
