"""Writes held back and sent together (app.adapters.write_batch), on PostgreSQL.

An allocation's transaction is four statements on the wire: BEGIN, the
lock with the reads, every write, COMMIT. Writes that touch a table another
held write touches go in order, in statements of their own; a write that
must touch one row and touches none fails the transaction at its flush.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm.exc import StaleDataError

from app.adapters import tables
from app.adapters.engines import build_engine
from app.adapters.transactions import transaction
from app.domain import events, model
from app.service_layer.unit_of_work import InlineHandlers, SqlUnitOfWork
from tests.support.refs import random_ref

pytestmark = pytest.mark.postgres


@pytest.fixture
async def one_connection(postgres_url: str) -> AsyncIterator[tuple[AsyncEngine, list[str]]]:
    """An engine of one pooled connection, and every statement sent on it, as sent."""
    engine = build_engine(postgres_url, pool_size=1)
    sent: list[str] = []
    raw = await engine.raw_connection()
    driver: Any = raw.driver_connection
    driver.add_query_logger(lambda logged: sent.append(logged.query))
    raw.close()  # back to the pool, the logger with it
    try:
        yield engine, sent
    finally:
        await engine.dispose()


async def test_an_allocation_is_four_statements(
    one_connection: tuple[AsyncEngine, list[str]], inline_handlers: InlineHandlers
) -> None:
    engine, sent = one_connection
    sku, ref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    async with SqlUnitOfWork(engine, inline_handlers) as uow:
        product = model.Product(sku, [])
        uow.products.add(product)
        product.add_batch(model.Batch(ref, sku, 10, None))
        await uow.commit()

    async def allocate(orderid: str) -> None:
        async with SqlUnitOfWork(engine, inline_handlers, {events.Allocated}) as uow:
            product = await uow.products.get(sku, orderid=orderid)
            assert product is not None
            product.allocate(model.OrderLine(orderid, sku, 3))
            await uow.commit()
        await asyncio.sleep(0)  # the driver tells its loggers soon after, not at once

    await allocate(random_ref("order"))  # the statements prepared, their types looked up
    sent.clear()
    await allocate(orderid)

    assert [q.split()[0] for q in sent] == ["BEGIN", "WITH", "WITH", "COMMIT"], sent
    async with engine.connect() as conn:
        b, v = tables.batches.c, tables.allocations_view.c
        allocated = await conn.scalar(select(b.allocated_quantity).where(b.reference == ref))
        viewed = await conn.scalar(select(v.batchref).where(v.orderid == orderid))
    assert (allocated, viewed) == (6, ref)


async def test_writes_to_one_table_go_in_order(
    one_connection: tuple[AsyncEngine, list[str]],
) -> None:
    # In one statement the update would not see the row the insert adds.
    engine, sent = one_connection
    ref = random_ref("batch")
    v = tables.batches_view.c
    add = insert(tables.batches_view).values(
        reference=bindparam("r"), sku="s", purchased=1, allocated=0, version=1
    )
    grow = (
        update(tables.batches_view)
        .where(v.reference == bindparam("r"))
        .values(purchased=v.purchased + 1, version=2)
    )
    tx = transaction(engine)
    try:
        await tx.write(add, {"r": ref})
        await tx.write(grow, {"r": ref}, expect=1, stale="the row is not there yet")
        await tx.write(grow, {"r": ref}, expect=1)
        [(purchased,)] = await tx.fetch(select(v.purchased).where(v.reference == ref))
    finally:
        await tx.close()
    await asyncio.sleep(0)

    assert purchased == 3
    assert [q.split()[0] for q in sent] == [
        "BEGIN",
        "INSERT",
        "UPDATE",
        "UPDATE",
        "SELECT",
        "ROLLBACK",
    ]


async def test_a_write_that_touches_no_row_it_must_fails_at_the_flush(
    one_connection: tuple[AsyncEngine, list[str]],
) -> None:
    engine, _ = one_connection
    p = tables.products.c
    stale = (
        update(tables.products)
        .where(p.sku == bindparam("product"))
        .values(version_number=bindparam("version"))
    )
    tx = transaction(engine)
    try:
        await tx.write(stale, {"product": random_ref("nothing"), "version": 2}, expect=1, stale="x")
        with pytest.raises(StaleDataError, match="x"):
            await tx.commit()
    finally:
        await tx.close()


@pytest.mark.parametrize("lines", [3, 12])
async def test_a_group_of_allocations_is_nine_statements_however_many(
    one_connection: tuple[AsyncEngine, list[str]], inline_handlers: InlineHandlers, lines: int
) -> None:
    engine, sent = one_connection
    sku, ref = random_ref("sku"), random_ref("batch")
    async with SqlUnitOfWork(engine, inline_handlers) as uow:
        product = model.Product(sku, [])
        uow.products.add(product)
        product.add_batch(model.Batch(ref, sku, 100, None))
        await uow.commit()

    async def allocate_together(orderids: list[str]) -> None:
        async with SqlUnitOfWork(engine, inline_handlers, {events.Allocated}) as uow:
            await uow.products.prefetch(sku, orderids)
            for orderid in orderids:  # as a group's commands are handled
                async with uow.share() as share:
                    got = await share.products.get(sku, orderid=orderid)
                    assert got is not None
                    got.allocate(model.OrderLine(orderid, sku, 1))
                    await share.commit()
            await uow.commit()
        await asyncio.sleep(0)

    await allocate_together([random_ref("order") for _ in range(lines)])  # prepared
    sent.clear()
    await allocate_together([random_ref("order") for _ in range(lines)])

    assert len(sent) == 9, sent  # BEGIN, the lock and read, a write, 5 executemanys, COMMIT
    async with engine.connect() as conn:
        b = tables.batches.c
        allocated = await conn.scalar(select(b.allocated_quantity).where(b.reference == ref))
    assert allocated == 2 * lines
