"""What routes depend on, each named by its provider in the app's container.

The HTTP layer reaches a dependency one way: from ``app.state.container``, by
the provider's name, so that no route imports the container. A route
declares it as ``Annotated[T, provided(name)]``, an async function resolved on
the event loop. (dependency-injector's ``Provide`` markers are plain
callables, which FastAPI runs in a worker thread: two thread hops per write,
measured at a tenth of its CPU.)

The read source is looked up the same way but called, ``reads_of(request)``,
not declared: as a FastAPI sub-dependency it cost the read routes 0.06 to
0.14 of the bare floor in ``make bench`` (0.89 and 0.90 against 0.96 and
1.04, alternating runs), a read's whole budget.
"""

from typing import Annotated, Any

from fastapi import Depends, Request
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters.read_source import ReadSource
from app.config import Settings
from app.entrypoints.api.idempotency import Idempotency
from app.service_layer.messagebus import MessageBus
from app.service_layer.unit_of_work import AbstractUnitOfWork


def provided(name: str) -> Any:
    """``Depends`` on what the app's container provides as ``name``, per request."""

    async def dependency(request: Request) -> Any:
        return getattr(request.app.state.container, name)()

    dependency.__name__ = f"provided_{name}"
    return Depends(dependency)


Bus = Annotated[MessageBus, provided("bus")]
Once = Annotated[Idempotency, provided("idempotency")]
ServiceSettings = Annotated[Settings, provided("settings")]
UnitOfWork = Annotated[AbstractUnitOfWork, provided("uow")]  # a new one per request
Engine = Annotated[AsyncEngine, provided("engine")]  # the primary's
RedisClient = Annotated[Redis | None, provided("redis")]  # None without REDIS_URL


def reads_of(request: Request) -> ReadSource:
    """Where reads run, the replica or the primary (app.adapters.read_source)."""
    reads: ReadSource = request.app.state.container.read_source()
    return reads
