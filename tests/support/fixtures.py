"""Fixtures shared by many modules, registered by the root conftest (``pytest_plugins``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from dependency_injector import providers

from app.config import Settings
from app.container import Container
from tests.support.containers import running_container
from tests.support.databases import postgres_database
from tests.support.fakes import FakeNotifications, FakePublisher
from tests.support.servers import SmtpSink, free_port


@pytest.fixture
async def private_database(postgres_server_url: str) -> AsyncIterator[str]:
    """A migrated PostgreSQL database of the test's own, dropped after it.

    The session's shared database may have another relay on it (the uvicorn
    fixture runs one), which would claim a test's due events behind its back.
    """
    async with postgres_database(postgres_server_url) as url:
        yield url


@pytest.fixture(scope="module")
async def module_database(postgres_server_url: str) -> AsyncIterator[str]:
    """A migrated PostgreSQL database of the module's own, dropped after its tests."""
    async with postgres_database(postgres_server_url) as url:
        yield url


@pytest.fixture
def notifications() -> FakeNotifications:
    """Notifications kept in memory, for the test to read."""
    return FakeNotifications()


@pytest.fixture
def publisher() -> FakePublisher:
    """Published messages kept in memory, for the test to read."""
    return FakePublisher()


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpSink]:
    """An SMTP server of the test's own, keeping what it receives."""
    sink = SmtpSink(free_port())
    await sink.start()
    try:
        yield sink
    finally:
        await sink.stop()


@pytest.fixture
def container_overrides() -> dict[str, Any]:
    """What a module's ``container`` has in place of the real thing, by provider name."""
    return {}


@pytest.fixture
async def container(
    settings: Settings, container_overrides: dict[str, Any]
) -> AsyncIterator[Container]:
    """The service's container on the module's ``settings``, its resources open; no relay
    runs by itself unless ``settings`` say so."""
    async with running_container(settings) as built:
        for name, value in container_overrides.items():
            getattr(built, name).override(providers.Object(value))
        yield built


@pytest.fixture
async def http(uvicorn_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the session's real ``allocation serve``, on PostgreSQL."""
    async with httpx.AsyncClient(base_url=uvicorn_url, timeout=15) as client:
        yield client
