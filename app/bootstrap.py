"""Start-up and shut-down of each of the service's processes, written once.

The book's bootstrap builds the message bus with its dependencies; here that
is the container's (app.container), and this module runs it. Every process
(the API, the worker, an operator's command) starts the same way: logs as the
settings say, traces as the OTEL_* variables say, the container opened, the
database checked to be reachable and at this code's schema. The API and the worker then run their
background work (the outbox relay, the backlog gauges, the replica watch, the
holds' deadlines, the worker's consumers) beside what they serve, until told to stop, and stop it
before the container closes. A start that cannot go on is one line and exit
code 1, not a traceback.

The container is imported when a process first needs it, not with this
module: ``allocation outbox``, which needs none, answers before the rest of
the service would have been imported (make bench-startup).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from app import logs, tracing
from app.adapters.schema_version import StartupError, check_database
from app.config import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from app.container import Container
    from app.service_layer.gauges import Backlogs

logger = logging.getLogger("app.bootstrap")
T = TypeVar("T")
# Background work: runs until the event it is given is set.
Work = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


def container_for(settings: Settings, redis: Redis | None = None) -> Container:
    """The service's container on ``settings`` (and a Redis client already made); nothing opened."""
    from dependency_injector import providers

    from app.container import Container

    container = Container()
    container.settings.override(providers.Object(settings))
    if redis is not None:
        container.redis.override(providers.Object(redis))
    return container


@asynccontextmanager
async def opened(container: Container, *, database: bool = True) -> AsyncIterator[Container]:
    """``container`` with its resources open, and with ``database`` checked; closed on leaving.

    StartupError if the database cannot be reached or is not at this code's schema.
    """
    from app import container as composition

    tracing.start()  # if the OTEL_* variables say so; once per process
    await composition.start(container)
    try:
        if database:
            await check_database(container.engine())
        yield container
    finally:
        await composition.stop(container)


@asynccontextmanager
async def background(
    container: Container, more: dict[str, Work] | None = None, *, relay: bool | None = None
) -> AsyncIterator[None]:
    """The process's background work while the block runs: the relay (by
    default as RELAY_ENABLED says), the gauges, the replica watch, the holds'
    deadlines, and ``more``; stopped and awaited on leaving, each having
    finished what it held."""
    from app.service_layer import gauges, holds

    settings = container.settings()
    work: dict[str, Work] = {
        "gauges": lambda stop: gauges.keep(container.uow, backlogs(container), stop),
        "replica watch": container.read_source().watch,
        "hold expiry": lambda stop: holds.expire_due(container.uow, container.bus().handle, stop),
    }
    if settings.relay_enabled if relay is None else relay:
        work["outbox relay"] = container.relay().run
    work.update(more or {})
    stop = asyncio.Event()
    tasks = [asyncio.create_task(run(stop), name=name) for name, run in work.items()]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def backlogs(container: Container) -> Backlogs:
    """Where change_batch_quantity waits, for the gauges: the group, the durable consumer."""
    from app.service_layer.gauges import Backlogs

    settings = container.settings()
    return Backlogs(
        container.redis(),
        settings.stream_group_name,
        container.jetstream(),
        settings.nats_durable_name,
        settings.names.change_batch_quantity,
    )


def refused(error: StartupError, settings: Settings | None = None) -> None:
    """Say, in one line, why the process cannot start."""
    logs.cannot_start(str(error), settings)
    logs.said(error)  # a server's traceback of the same error is left out


def run(settings: Settings, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """A process that is not a server (the worker, an operator's command): ``main()``
    in an event loop of its own. A start that cannot go on exits 1, in one line."""
    logs.configure(settings.log_level, settings.log_format)
    try:
        return asyncio.run(main())
    except StartupError as e:
        refused(e, settings)
        raise SystemExit(1) from None
    finally:
        tracing.stop()
