"""The worker's own HTTP endpoints, on ``WORKER_PORT``: is it alive, can it work, its metrics.

- ``GET /health``: 200 while the process runs its loop (liveness).
- ``GET /ready``: 200 when it reaches the database and, with ``REDIS_URL``,
  Redis, with ``NATS_URL`` NATS, and its consumers are subscribed and
  reading; else 503 naming what is not (readiness: it cannot work without
  them). ``checks`` as the API's.
- ``GET /metrics``: this process's metrics, in Prometheus's text format.

Served by uvicorn, from the worker's own event loop, beside its consumers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import uvicorn
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app import metrics
from app.adapters.health import check_all
from app.adapters.jetstream import JetStream

logger = logging.getLogger(__name__)


class Reader(Protocol):
    check: str  # its name in the checks: redis_pubsub, redis_stream, jetstream
    ready: asyncio.Event


@dataclass(frozen=True)
class Health:
    engine: AsyncEngine
    redis: Redis | None
    readers: Sequence[Reader]
    nats: JetStream | None = None

    async def checks(self) -> dict[str, str]:
        """The API's checks but the replica (the worker reads none), and each consumer's."""
        checks = await check_all(self.engine, self.redis, self.nats)
        del checks["replica"]
        for reader in self.readers:
            checks[reader.check] = "ok" if reader.ready.is_set() else "error: not reading"
        return checks


def app(health: Health) -> Starlette:
    async def alive(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(_: Request) -> Response:
        checks = await health.checks()
        down = [name for name, state in checks.items() if state.startswith("error")]
        if down:
            message = f"not ready: {', '.join(down)}"
            return JSONResponse({"message": message, "checks": checks}, status_code=503)
        return JSONResponse({"status": "ready", "checks": checks})

    async def scrape(_: Request) -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    return Starlette(
        routes=[Route("/health", alive), Route("/ready", ready), Route("/metrics", scrape)]
    )


class _Embedded(uvicorn.Server):
    """uvicorn inside the worker's loop: the worker, not uvicorn, answers SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(health: Health, host: str, port: int, stop: asyncio.Event) -> None:
    """Serve the endpoints on ``host``:``port`` until ``stop``."""
    config = uvicorn.Config(
        app(health), host=host, port=port, log_config=None, access_log=False, lifespan="off"
    )
    server = _Embedded(config)
    serving = asyncio.create_task(server.serve())
    logger.info("health, readiness and metrics on %s:%d", host, port)
    await stop.wait()
    server.should_exit = True
    await serving
