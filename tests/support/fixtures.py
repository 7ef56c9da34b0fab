"""Fixtures shared by many modules, registered by the root conftest (``pytest_plugins``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

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
