"""Route dependencies on the container, named by provider: routes need not import it.

Each is an async function, resolved on the event loop. (dependency-injector's
``Provide`` markers are plain callables, which FastAPI runs in a worker
thread: two thread hops per write, measured at a tenth of its CPU.)
"""

from typing import Annotated, Any

from fastapi import Depends, Request

from app.entrypoints.api.idempotency import Idempotency
from app.service_layer.messagebus import MessageBus


def provided(name: str) -> Any:
    """``Depends`` on what the app's container provides as ``name``, per request."""

    async def dependency(request: Request) -> Any:
        return getattr(request.app.state.container, name)()

    dependency.__name__ = f"provided_{name}"
    return Depends(dependency)


Bus = Annotated[MessageBus, provided("bus")]
Once = Annotated[Idempotency, provided("idempotency")]
