"""What routes depend on: the services the app's container provides, typed.

The HTTP layer reaches them one way, ``Services``: what it needs of the
composition root, as a protocol. ``app.main`` hands it the container, and
mypy checks there that the container has each of them, with its type; a
route's dependency names its service as an attribute, which mypy checks
here. No route imports the container.

Each is an async function, resolved on the event loop. (dependency-injector's
``Provide`` markers are plain callables, which FastAPI runs in a worker
thread: two thread hops per write, measured at a tenth of its CPU.)

The read source is looked up the same way but called, ``reads_of(request)``,
not declared: as a FastAPI sub-dependency it cost the read routes 0.06 to
0.14 of the bare floor in ``make bench`` (0.89 and 0.90 against 0.96 and
1.04, alternating runs), a read's whole budget.
"""

from collections.abc import Callable
from typing import Annotated, Protocol

from fastapi import Depends, Request
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters.idempotency import AbstractIdempotencyKeys
from app.adapters.jetstream import JetStream
from app.adapters.read_source import ReadSource
from app.config import Settings
from app.entrypoints.http.idempotency import Idempotency
from app.service_layer.messagebus import MessageBus
from app.service_layer.unit_of_work import AbstractUnitOfWork


class Services(Protocol):
    """What the HTTP layer takes from the composition root: each called for its instance."""

    @property
    def bus(self) -> Callable[[], MessageBus]: ...
    @property
    def idempotency_keys(self) -> Callable[[], AbstractIdempotencyKeys]: ...
    @property
    def settings(self) -> Callable[[], Settings]: ...
    @property
    def uow(self) -> Callable[[], AbstractUnitOfWork]: ...  # a new one per call
    @property
    def engine(self) -> Callable[[], AsyncEngine]: ...  # the primary's
    @property
    def redis(self) -> Callable[[], Redis | None]: ...  # None without REDIS_URL
    @property
    def jetstream(self) -> Callable[[], JetStream | None]: ...  # None without NATS_URL
    @property
    def read_source(self) -> Callable[[], ReadSource]: ...


def services(request: Request) -> Services:
    """The app's services (set by ``app.main``)."""
    provided: Services = request.app.state.services
    return provided


async def _bus(request: Request) -> MessageBus:
    return services(request).bus()


async def idempotency(request: Request) -> Idempotency:
    """The writes' ``Idempotency-Key`` handling, on the service's keys."""
    return Idempotency(services(request).idempotency_keys())


async def _settings(request: Request) -> Settings:
    return services(request).settings()


Bus = Annotated[MessageBus, Depends(_bus)]
Once = Annotated[Idempotency, Depends(idempotency)]
ServiceSettings = Annotated[Settings, Depends(_settings)]


def reads_of(request: Request) -> ReadSource:
    """Where reads run, the replica or the primary (app.adapters.read_source)."""
    return services(request).read_source()
