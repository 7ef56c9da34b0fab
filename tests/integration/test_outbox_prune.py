"""The outbox stays small by itself: a million delivered events pruned while writes go on.

PostgreSQL, as deployed: DB_TIMEOUT bounds every statement, on the client and
on the server, and autovacuum may be off (it is on this project's machines).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from app import container as composition
from app.adapters.database_errors import DatabaseUnavailable
from app.config import Settings
from app.container import Container
from app.domain import commands
from tests.support.polling import eventually
from tests.support.refs import random_ref

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

DELIVERED = 1_000_000
DB_TIMEOUT = 2.0  # seconds: far less than a prune of them all in one statement takes
RETENTION = timedelta(days=1)


@pytest.fixture(scope="module")
async def admin(module_database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(module_database, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    yield engine
    await engine.dispose()


async def scalar(engine: AsyncEngine, sql: str) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text(sql))).scalar_one())


async def test_a_million_delivered_events_are_pruned_in_chunks_while_writes_go_on(
    module_database: str, admin: AsyncEngine
) -> None:
    # Two days old, each with a ledger row, as if one handler had failed once.
    async with admin.connect() as conn:
        await conn.execute(
            text(
                "INSERT INTO outbox (id, type, payload, created_at, available_at, completed_at,"
                " attempts)"
                " SELECT md5(g::text), 'Allocated', '{}', t, t, t, 1"
                " FROM generate_series(1, :n) AS g,"
                " LATERAL (SELECT (now() AT TIME ZONE 'utc') - interval '2 days') AS d(t)"
            ),
            {"n": DELIVERED},
        )
        await conn.execute(
            text(
                "INSERT INTO processed_messages (message_id, handler, processed_at)"
                " SELECT id, 'publish_allocated_event', created_at FROM outbox"
            )
        )
    container = Container()
    container.settings.override(
        Settings(database_url=module_database, db_timeout=DB_TIMEOUT, relay_enabled=False)
    )
    await composition.start(container)
    try:
        sku = random_ref("sku")
        await container.bus().handle(commands.CreateBatch(random_ref("b"), sku, 10**6, None))
        writes: list[float] = []

        async def keep_writing(done: asyncio.Event) -> None:
            while not done.is_set():
                started = time.monotonic()
                await container.bus().handle(commands.Allocate(random_ref("o"), sku, 1))
                writes.append(time.monotonic() - started)

        done = asyncio.Event()
        writer = asyncio.create_task(keep_writing(done))
        try:
            removed = await container.delivery().prune(RETENTION)
        finally:
            done.set()
            await writer
    finally:
        await composition.stop(container)

    assert removed == DELIVERED
    assert await scalar(admin, "SELECT count(*) FROM outbox WHERE completed_at IS NOT NULL") == 0
    assert await scalar(admin, "SELECT count(*) FROM processed_messages") == 0
    # Writes went on throughout, none held up for as long as a statement may take.
    assert len(writes) > 10
    assert max(writes) < DB_TIMEOUT
    # Nothing of ours is left running on the server.
    assert (
        await scalar(
            admin,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND state <> 'idle' AND pid <> pg_backend_pid()",
        )
        == 0
    )
    # And the space is free to reuse, autovacuum or not.
    assert (
        await scalar(
            admin,
            "SELECT count(*) FROM pg_stat_user_tables"
            " WHERE relname IN ('outbox', 'processed_messages') AND last_vacuum IS NOT NULL",
        )
        == 2
    )


async def test_a_statement_past_db_timeout_is_cancelled_on_the_server(
    module_database: str, admin: AsyncEngine
) -> None:
    container = Container()
    container.settings.override(Settings(database_url=module_database, db_timeout=0.5))
    await composition.start(container)
    try:
        with pytest.raises(DatabaseUnavailable):
            async with container.uow() as uow:
                await uow.tx.execute(text("SELECT pg_sleep(5)"))
    finally:
        await composition.stop(container)

    # The server ends it by itself, long before it would have finished.
    await eventually(lambda: sleeping_done(admin), 2, "pg_sleep to be cancelled on the server")


async def sleeping_done(admin: AsyncEngine) -> bool:
    running = await scalar(
        admin,
        "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(5)'"
        " AND state = 'active'",
    )
    return running == 0
