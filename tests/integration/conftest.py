"""Integration fixtures: real engines on SQLite and PostgreSQL, and the inline handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters.engines import build_engine
from app.service_layer import handlers
from app.service_layer.unit_of_work import InlineHandlers
from tests.support.databases import postgres_database


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """The writer engine, as the service builds it."""
    engine = build_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def postgres_engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    engine = build_engine(postgres_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def inline_handlers() -> InlineHandlers:
    """The inline handlers the service registers (read models, reallocation)."""
    return handlers.INLINE_HANDLERS


@pytest.fixture
async def empty_postgres_url(postgres_server_url: str) -> AsyncIterator[str]:
    """A brand-new database of this test's own, dropped after it."""
    async with postgres_database(postgres_server_url, migrated=False) as url:
        yield url


@pytest.fixture
def empty_sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_database_url(request: pytest.FixtureRequest) -> str:
    """A database with no tables at all, on SQLite and then on PostgreSQL."""
    url: str = request.getfixturevalue(f"empty_{request.param}_url")
    return url
