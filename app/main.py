"""The ASGI application: ``uvicorn app.main:app``."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from dependency_injector import providers
from fastapi import FastAPI

from app import container as composition
from app.adapters import orm
from app.config import Settings
from app.container import Container
from app.entrypoints.api import errors, health, openapi, routes



def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application; nothing connects until its lifespan starts."""
    orm.start_mappers()
    container = Container()
    if settings is not None:
        container.settings.override(providers.Object(settings))
    container.wire(modules=[routes])

    @asynccontextmanager
    async def lifespan(application: FastAPI) -> AsyncIterator[None]:
        level = container.settings().log_level
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")  # no-op if configured
        logging.getLogger("app").setLevel(level)
        await composition.start(container)
        # The read routes take the engine from here: no container work per read.
        application.state.read_engine = container.read_engine()
        application.state.engine = container.engine()
        application.state.redis = container.redis()
        stop = asyncio.Event()
        relay = None
        if container.settings().relay_enabled:
            relay = asyncio.create_task(container.relay().run(stop), name="outbox relay")
        try:
            yield
        finally:
            stop.set()
            if relay is not None:
                await relay
            await composition.stop(container)

    app = FastAPI(
        title="Allocation service",
        version="1.0.0",
        description=openapi.DESCRIPTION,
        openapi_tags=openapi.TAGS,
        lifespan=lifespan,
    )
    app.state.container = container
    app.include_router(routes.router)
    app.include_router(health.router)
    errors.install(app)
    return app


app = create_app()
