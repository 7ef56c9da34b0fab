"""The app's container, run in the test's own process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from dependency_injector import providers

from app import container as composition
from app.config import Settings
from app.container import Container


@asynccontextmanager
async def running_container(settings: Settings) -> AsyncIterator[Container]:
    """The app's container on ``settings``, resources open; no relay runs by itself."""
    container = Container()
    container.settings.override(providers.Object(settings))
    await composition.start(container)
    try:
        yield container
    finally:
        await composition.stop(container)
