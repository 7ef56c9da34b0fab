"""The real engines, unit of work and read path when the database is not there.

Nothing listening on a port: connections refused, at once. A server of the
test's own restarted under open pools: connections the server dropped, which
the pools must replace by themselves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app import views
from app.adapters import reads
from app.adapters.database_errors import DatabaseUnavailable
from app.adapters.engines import build_engine
from app.adapters.read_source import ReadSource
from app.backoff import Backoff
from app.domain import commands, events
from app.service_layer import handlers
from app.service_layer.delivery import Delivery
from app.service_layer.messagebus import MessageBus, RetryPolicy
from app.service_layer.unit_of_work import InlineHandlers, SqlUnitOfWork
from tests.support.databases import alembic_upgrade
from tests.support.refs import random_ref
from tests.support.servers import PostgresCluster, free_port

DB_TIMEOUT = 2.0
# The batch read model, written in the command's transaction.
INLINE: InlineHandlers = {
    events.BatchCreated: {"add_batch_to_read_model": handlers.add_batch_to_read_model},
    events.BatchQuantityChanged: {
        "resize_batch_in_read_model": handlers.resize_batch_in_read_model
    },
}


def bus(engine: AsyncEngine, built: list[SqlUnitOfWork]) -> MessageBus:
    def uow() -> SqlUnitOfWork:
        built.append(SqlUnitOfWork(engine, inline=INLINE))
        return built[-1]

    return MessageBus(
        uow_factory=uow,
        command_handlers={
            commands.CreateBatch: handlers.add_batch,
            commands.ChangeBatchQuantity: handlers.change_batch_quantity,
        },
        retry=RetryPolicy(attempts=5, backoff=Backoff(0.01, 0.1, jitter=True)),
        delivery=Delivery(uow, handlers={}),
    )


@pytest.fixture
async def nowhere() -> AsyncIterator[AsyncEngine]:
    """An engine on a port where nothing listens."""
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/allocation"
    engine = build_engine(url, db_timeout=DB_TIMEOUT)
    try:
        yield engine
    finally:
        await engine.dispose()


async def test_a_write_fails_once_and_fast_with_database_unavailable(nowhere: AsyncEngine) -> None:
    built: list[SqlUnitOfWork] = []
    started = time.monotonic()

    with pytest.raises(DatabaseUnavailable, match="ConnectionRefusedError"):
        await bus(nowhere, built).handle(commands.CreateBatch(random_ref("batch"), "sku", 10))

    assert len(built) == 1  # no retry
    assert time.monotonic() - started < 1


async def test_reads_and_the_ping_fail_fast(nowhere: AsyncEngine) -> None:
    started = time.monotonic()

    with pytest.raises(DatabaseUnavailable, match="ConnectionRefusedError"):
        await views.batch(ReadSource(nowhere), random_ref("batch"))
    with pytest.raises(ConnectionRefusedError):
        await reads.ping(nowhere)

    assert time.monotonic() - started < 1


@pytest.mark.postgres
@pytest.mark.slow
async def test_pools_replace_every_connection_the_restarted_server_dropped(
    postgres_cluster: PostgresCluster,
) -> None:
    await asyncio.to_thread(alembic_upgrade, postgres_cluster.url)
    pool_size = 3
    write = build_engine(postgres_cluster.url, pool_size=pool_size, db_timeout=DB_TIMEOUT)
    read = build_engine(
        postgres_cluster.url, pool_size=pool_size, writer=False, db_timeout=DB_TIMEOUT
    )
    ref = random_ref("batch")
    built: list[SqlUnitOfWork] = []
    try:
        await bus(write, built).handle(commands.CreateBatch(ref, random_ref("sku"), 10))

        async def hold_all(engine: AsyncEngine) -> None:
            """Open every connection of the pool at once, then give them back."""
            raws = await asyncio.gather(*(engine.raw_connection() for _ in range(pool_size)))
            for raw in raws:
                raw.close()

        await hold_all(read)
        await hold_all(write)
        assert read.sync_engine.pool.checkedin() == pool_size  # type: ignore[attr-defined, unused-ignore]

        await asyncio.to_thread(postgres_cluster.stop)
        await asyncio.to_thread(postgres_cluster.start)

        # The first use of each pool meets a dropped connection, and says so...
        with pytest.raises(DatabaseUnavailable, match="connection is closed"):
            await views.batch(ReadSource(read), ref)
        with pytest.raises(DatabaseUnavailable):
            await bus(write, built).handle(commands.ChangeBatchQuantity(ref, 9))
        # ... and then every stale connection is replaced: no other use fails.
        for _ in range(2 * pool_size):
            assert await views.batch(ReadSource(read), ref) is not None
            await reads.ping(read)
            await reads.ping(write)
        await bus(write, built).handle(commands.ChangeBatchQuantity(ref, 8))
        batch = await views.batch(ReadSource(read), ref)
        assert batch is not None
        assert batch["purchased"] == 8
    finally:
        await write.dispose()
        await read.dispose()
