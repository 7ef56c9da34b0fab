"""Shared fixtures: databases, the app in-process, and a real uvicorn.

PostgreSQL tests run when TEST_DATABASE_URL names a server (any database on
it; the tests create and drop their own), Redis tests when TEST_REDIS_URL
names one. Without them they skip, unless REQUIRE_SERVICES is set, when they
fail: CI sets it. A server that is named but does not answer always fails.

Only fixtures and hooks live here: the helpers are in tests/support, and the
fixtures shared beyond these in tests/support/fixtures.py.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from redis.asyncio import Redis
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from app import outages
from app.adapters import tables
from app.config import Settings
from app.main import create_app
from app.wire import CHANGE_BATCH_QUANTITY, LINE_ALLOCATED
from tests.support.apps import serving
from tests.support.databases import ROOT, alembic_upgrade, postgres_database
from tests.support.processes import ALLOCATION
from tests.support.servers import (
    PostgresCluster,
    RedisServer,
    find_bindir,
    free_port,
    required,
    running_cluster,
    unavailable,
    wait_until_serving,
)

pytest_plugins = ["tests.support.fixtures"]


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The order and grouping the tests run in, in parallel (``make test``: pytest-xdist).

    Tests on the shared Redis (TEST_REDIS_URL) share its fixed channel,
    stream and consumer group names, the book's: they go in one group, which
    xdist's ``--dist loadgroup`` runs in one process, one after another.
    The rest are spread over the processes, the slow ones first, so that the
    last to finish is a short one.
    """
    for item in items:
        if "redis_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("shared-redis"))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Stop at once if xdist did not take the groups: the shared-Redis tests
    would run side by side and read each other's messages, failing at random.
    """
    if not getattr(session.config.option, "loadgroup", False):  # set in xdist's workers
        return
    for item in session.items:
        if item.get_closest_marker("xdist_group") and "@" not in item.nodeid:
            raise pytest.UsageError(
                f"pytest-xdist did not group {item.nodeid}: this pytest and pytest-xdist "
                "do not work together (see the pytest pin in pyproject.toml)"
            )


@pytest.fixture(autouse=True)
def _no_outage_yet() -> None:
    """Each test starts, as a process does, with no outage known (app.outages)."""
    outages.forget()


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    return required("TEST_DATABASE_URL")


@pytest.fixture(scope="session")
async def redis_server_url() -> str:
    """TEST_REDIS_URL, checked to answer: an unreachable server fails the run."""
    url = required("TEST_REDIS_URL")
    client = Redis.from_url(url, socket_connect_timeout=5)
    try:
        await client.ping()
    finally:
        await client.aclose()
    return url


@pytest.fixture
async def redis_url(redis_server_url: str) -> str:
    """The shared Redis, with the book's streams gone: what an earlier test left
    in them (an entry its worker never acknowledged, say) is not this test's to read.
    """
    async with Redis.from_url(redis_server_url) as client:
        await client.delete(CHANGE_BATCH_QUANTITY, LINE_ALLOCATED)
    return redis_server_url


@pytest.fixture
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL server of the test's own, to stop and start again (tests/support/servers.py)."""
    bindir = find_bindir()
    if bindir is None:
        unavailable("PostgreSQL server binaries not found (apt-get install postgresql)")
    with running_cluster(bindir, free_port()) as cluster:
        yield cluster


@pytest.fixture(scope="session")
async def new_postgres_database(postgres_server_url: str) -> AsyncIterator[str]:
    """A URL to a brand-new, empty database, dropped after the session."""
    async with postgres_database(postgres_server_url, migrated=False) as url:
        yield url


@pytest.fixture(scope="session")
async def postgres_url(new_postgres_database: str) -> str:
    """A migrated PostgreSQL database shared by the session; tests use random refs."""
    await asyncio.to_thread(alembic_upgrade, new_postgres_database)
    return new_postgres_database


@pytest.fixture
async def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'allocation.db'}"
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(tables.metadata.create_all)
        await conn.run_sync(_stamp)
    await engine.dispose()
    return url


def _stamp(conn: Connection) -> None:
    """Mark a database made from the metadata as migrated, as alembic would."""
    MigrationContext.configure(conn).stamp(
        ScriptDirectory(str(ROOT / "app" / "migrations")), "head"
    )


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """PostgreSQL, where the service's data lives in production. SQLite, the embedded
    default, runs what its users take: the book's flow over HTTP (tests/e2e/test_book_api.py),
    the migrations, the CLI, and the HTTP edge's own tests."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on the app in-process, lifespan entered."""
    async with serving(create_app(Settings(database_url=database_url))) as c:
        yield c


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A redis-server of the test's own on a free port, to stop and start at will."""
    server = RedisServer(free_port(), tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(scope="session")
def uvicorn_url(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The production command, ``allocation serve``, two processes, on the session's PostgreSQL."""
    port = free_port()
    log = tmp_path_factory.mktemp("uvicorn") / "server.log"
    env = {**os.environ, "DATABASE_URL": postgres_url}
    env.pop("READ_DATABASE_URL", None)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                ALLOCATION,
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "2",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url, process, time.monotonic() + 30)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
