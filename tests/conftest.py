"""Shared fixtures: databases, the app in-process, and a real uvicorn.

PostgreSQL tests run when TEST_DATABASE_URL names a server (any database on
it; the tests create and drop their own), Redis tests when TEST_REDIS_URL
names one. Without them they skip, unless REQUIRE_SERVICES is set, when they
fail: CI sets it. A server that is named but does not answer always fails.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from asgi_lifespan import LifespanManager
from redis.asyncio import Redis
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from app.adapters import orm
from app.config import Settings
from app.main import create_app
from tests.databases import ROOT, alembic_upgrade, postgres_database
from tests.integration.event_helpers import RedisServer
from tests.pg_cluster import PostgresCluster, find_bindir, running_cluster


def _required(variable: str) -> str:
    value = os.environ.get(variable)
    if value:
        return value
    _unavailable(f"{variable} is not set")


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("REQUIRE_SERVICES"):
        pytest.fail(f"{reason}, and REQUIRE_SERVICES says this run needs it")
    pytest.skip(reason)


def require_program(name: str, package: str, also: tuple[str, ...] = ()) -> str:
    """The path of program ``name``, installed from Debian's ``package``.

    Missing, the test skips, saying how to install it; with REQUIRE_SERVICES
    set (as in CI) it fails instead.
    """
    found = shutil.which(name) or next((p for p in also if os.access(p, os.X_OK)), None)
    if found:
        return found
    reason = f"{name} is not installed (apt-get install {package})"
    if os.environ.get("REQUIRE_SERVICES"):
        pytest.fail(f"{reason}, and REQUIRE_SERVICES says this run needs it")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    return _required("TEST_DATABASE_URL")


@pytest.fixture(scope="session")
async def redis_url() -> str:
    """TEST_REDIS_URL, checked to answer: an unreachable server fails the run."""
    url = _required("TEST_REDIS_URL")
    client = Redis.from_url(url, socket_connect_timeout=5)
    try:
        await client.ping()
    finally:
        await client.aclose()
    return url


@pytest.fixture
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL server of the test's own, to stop and start again (tests/pg_cluster.py)."""
    bindir = find_bindir()
    if bindir is None:
        _unavailable("PostgreSQL server binaries not found (apt-get install postgresql)")
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
        await conn.run_sync(orm.metadata.create_all)
        await conn.run_sync(_stamp)
    await engine.dispose()
    return url


def _stamp(conn: Connection) -> None:
    """Mark a database made from the metadata as migrated, as alembic would."""
    MigrationContext.configure(conn).stamp(ScriptDirectory(str(ROOT / "alembic")), "head")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on the app in-process, lifespan entered."""
    app = create_app(Settings(database_url=database_url))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
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


def random_ref(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until_serving(url: str, process: subprocess.Popen[Any], deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/openapi.json", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not start serving")


@pytest.fixture(scope="session")
def uvicorn_url(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``uvicorn app.main:app`` process on the session's PostgreSQL database."""
    port = free_port()
    log = tmp_path_factory.mktemp("uvicorn") / "server.log"
    env = {**os.environ, "DATABASE_URL": postgres_url}
    env.pop("READ_DATABASE_URL", None)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app.main:app",
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
