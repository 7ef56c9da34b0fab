"""What routes depend on, each named by its provider in the app's container.

The one way the HTTP layer reaches a dependency: ``Annotated[T, provided(name)]``,
resolved per request from ``app.state.container``, so that no route imports
the container. Each is an async function, resolved on the event loop.
(dependency-injector's ``Provide`` markers are plain callables, which FastAPI
runs in a worker thread: two thread hops per write, measured at a tenth of
its CPU.)
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
# Where reads run: the replica or the primary (app.adapters.read_source).
Reads = Annotated[ReadSource, provided("read_source")]
ServiceSettings = Annotated[Settings, provided("settings")]
UnitOfWork = Annotated[AbstractUnitOfWork, provided("uow")]  # a new one per request
Engine = Annotated[AsyncEngine, provided("engine")]  # the primary's
RedisClient = Annotated[Redis | None, provided("redis")]  # None without REDIS_URL
