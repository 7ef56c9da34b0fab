"""The SQLAlchemy unit of work: what it commits, what it rolls back, which errors it retries.

Its commit is one transaction: the change, the inline handlers of the events
it raised (read models, reallocation), and the outbox rows of the events
that have after-commit handlers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm.exc import StaleDataError

from app.adapters import tables
from app.adapters.database_errors import ConcurrencyError
from app.adapters.engines import build_engine
from app.domain import events, model
from app.service_layer.unit_of_work import AbstractUnitOfWork, InlineHandlers, SqlUnitOfWork
from tests.support.polling import eventually
from tests.support.refs import random_ref

AFTER_COMMIT: Collection[type[events.Event]] = {events.Allocated, events.OutOfStock}


class Boom(Exception):
    pass


async def insert_product(engine: AsyncEngine, sku: str, batchref: str, qty: int) -> None:
    async with SqlUnitOfWork(engine) as uow:
        uow.products.add(model.Product(sku, [model.Batch(batchref, sku, qty, None)]))
        await uow.commit()


async def scalar(engine: AsyncEngine, query: Any) -> Any:
    async with engine.connect() as conn:
        return await conn.scalar(query)


async def batch_state(engine: AsyncEngine, ref: str) -> tuple[int, int] | None:
    """(allocated_quantity, sum of the qty of its allocation rows) of batch ``ref``."""
    b, a, lines = tables.batches.c, tables.allocations.c, tables.order_lines.c
    allocated = await scalar(engine, select(b.allocated_quantity).where(b.reference == ref))
    if allocated is None:
        return None
    total = await scalar(
        engine,
        select(func.coalesce(func.sum(lines.qty), 0))
        .join(tables.allocations, a.orderline_id == lines.id)
        .join(tables.batches, b.id == a.batch_id)
        .where(b.reference == ref),
    )
    return allocated, total or 0


async def product_count(engine: AsyncEngine, sku: str) -> int:
    count = await scalar(
        engine,
        select(func.count()).select_from(tables.products).where(tables.products.c.sku == sku),
    )
    return int(count or 0)


async def viewed_allocation(engine: AsyncEngine, orderid: str, sku: str) -> str | None:
    v = tables.allocations_view.c
    batchref: str | None = await scalar(
        engine, select(v.batchref).where(v.orderid == orderid, v.sku == sku)
    )
    return batchref


async def viewed_batch(engine: AsyncEngine, ref: str) -> tuple[int, int] | None:
    """(purchased, allocated) of batch ``ref`` in the read model."""
    v = tables.batches_view.c
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(v.purchased, v.allocated).where(v.reference == ref))
        ).one_or_none()
    return None if row is None else (row.purchased, row.allocated)


async def outbox_types(engine: AsyncEngine, sku: str) -> list[str]:
    o = tables.outbox.c
    async with engine.connect() as conn:
        rows = await conn.execute(select(o.type).where(o.sku == sku).order_by(o.version, o.type))
        return [r.type for r in rows]


async def allocate(engine: AsyncEngine, sku: str, orderid: str, qty: int) -> None:
    async with SqlUnitOfWork(engine) as uow:
        product = await uow.products.get(sku, orderid=orderid)
        assert product is not None
        product.allocate(model.OrderLine(orderid, sku, qty))
        await uow.commit()


async def is_blocking(engine: AsyncEngine, pid: object) -> bool:
    """Whether PostgreSQL backend ``pid`` holds a lock another backend waits for."""
    blocked = await scalar(
        engine,
        text(
            "SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"
        ).bindparams(pid=pid),
    )
    return bool(blocked)


async def test_commit_persists(engine: AsyncEngine) -> None:
    sku, batchref = random_ref("sku"), random_ref("batch")
    await insert_product(engine, sku, batchref, 10)

    async with SqlUnitOfWork(engine) as uow:
        product = await uow.products.get(sku)
        assert product is not None
        assert [b.reference for b in product.batches] == [batchref]


async def test_allocation_committed_through_the_uow_persists(engine: AsyncEngine) -> None:
    sku, batchref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    await insert_product(engine, sku, batchref, 10)

    await allocate(engine, sku, orderid, 3)

    assert await batch_state(engine, batchref) == (3, 3)


async def test_leaving_without_commit_rolls_back(engine: AsyncEngine) -> None:
    sku, batchref = random_ref("sku"), random_ref("batch")
    async with SqlUnitOfWork(engine) as uow:
        uow.products.add(model.Product(sku, [model.Batch(batchref, sku, 10, None)]))
        await uow.products.save()

    assert await product_count(engine, sku) == 0
    assert await batch_state(engine, batchref) is None


async def test_leaving_without_commit_rolls_back_an_allocation(engine: AsyncEngine) -> None:
    sku, batchref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    await insert_product(engine, sku, batchref, 10)

    async with SqlUnitOfWork(engine) as uow:
        product = await uow.products.get(sku, orderid=orderid)
        assert product is not None
        product.allocate(model.OrderLine(orderid, sku, 3))
        await uow.products.save()

    assert await batch_state(engine, batchref) == (0, 0)


async def test_an_exception_rolls_back_and_is_raised_unchanged(engine: AsyncEngine) -> None:
    sku, batchref = random_ref("sku"), random_ref("batch")

    async def fail_after_writing() -> None:
        async with SqlUnitOfWork(engine) as uow:
            uow.products.add(model.Product(sku, [model.Batch(batchref, sku, 10, None)]))
            await uow.products.save()
            raise Boom

    with pytest.raises(Boom):
        await fail_after_writing()

    assert await product_count(engine, sku) == 0


async def test_the_commit_updates_the_read_models_in_the_same_transaction(
    engine: AsyncEngine, inline_handlers: InlineHandlers
) -> None:
    sku, batchref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    async with SqlUnitOfWork(engine, inline_handlers, AFTER_COMMIT) as uow:
        uow.products.add(model.Product(sku, []))
        product = await uow.products.get(sku)
        assert product is not None
        product.add_batch(model.Batch(batchref, sku, 10, None))
        await uow.commit()
    assert await viewed_batch(engine, batchref) == (10, 0)

    async with SqlUnitOfWork(engine, inline_handlers, AFTER_COMMIT) as uow:
        product = await uow.products.get(sku, orderid=orderid)
        assert product is not None
        product.allocate(model.OrderLine(orderid, sku, 3))
        await uow.commit()

    # At once: nothing is left for the relay to do to the read side.
    assert await viewed_allocation(engine, orderid, sku) == batchref
    assert await viewed_batch(engine, batchref) == (10, 3)
    # Only the event with handlers after the commit waits in the outbox.
    assert await outbox_types(engine, sku) == ["Allocated"]
    assert [type(e) for e in uow.committed_events] == [events.Allocated]


async def test_a_refused_line_is_kept_with_the_product_version_it_was_refused_at(
    engine: AsyncEngine, inline_handlers: InlineHandlers
) -> None:
    sku, batchref = random_ref("sku"), random_ref("batch")
    fits, refused = random_ref("order"), random_ref("order")
    await insert_product(engine, sku, batchref, 2)

    async with SqlUnitOfWork(engine, inline_handlers, AFTER_COMMIT) as uow:
        product = await uow.products.get(sku, orderid=fits)
        assert product is not None
        product.allocate(model.OrderLine(fits, sku, 2))  # version 0 -> 1
        assert product.allocate(model.OrderLine(refused, sku, 1)) is None
        await uow.commit()

    r = tables.order_lines_view.c
    async with engine.connect() as conn:
        query = select(r.orderid, r.qty, r.version).where(r.sku == sku, r.state == "out_of_stock")
        rows = (await conn.execute(query)).all()
    assert [tuple(row) for row in rows] == [(refused, 1, 1)]


async def test_inline_handlers_reallocate_within_the_commit(
    engine: AsyncEngine, inline_handlers: InlineHandlers
) -> None:
    sku, first, second, orderid = (
        random_ref("sku"),
        random_ref("first"),
        random_ref("second"),
        random_ref("order"),
    )
    async with SqlUnitOfWork(engine, inline_handlers, AFTER_COMMIT) as uow:
        product = model.Product(sku, [])
        uow.products.add(product)
        product.add_batch(model.Batch(first, sku, 10, None))
        product.add_batch(model.Batch(second, sku, 10, None))
        product.allocate(model.OrderLine(orderid, sku, 6))
        await uow.commit()
    [allocated_to] = [b.reference for b in product.batches if b.allocations]

    async with SqlUnitOfWork(engine, inline_handlers, AFTER_COMMIT) as uow:
        changed = await uow.products.get_by_batchref(allocated_to)
        assert changed is not None
        changed.change_batch_quantity(allocated_to, 2)
        await uow.commit()

    other = second if allocated_to == first else first
    assert [type(e) for e in uow.committed_events] == [
        events.BatchQuantityChanged,
        events.Deallocated,
        events.Allocated,  # raised by ``reallocate``, in the same commit
    ]
    assert await batch_state(engine, allocated_to) == (0, 0)
    assert await batch_state(engine, other) == (6, 6)
    assert await viewed_allocation(engine, orderid, sku) == other
    assert await viewed_batch(engine, allocated_to) == (2, 0)
    assert await viewed_batch(engine, other) == (10, 6)
    assert await outbox_types(engine, sku) == ["Allocated", "Allocated"]


async def test_a_failing_inline_handler_commits_nothing(
    engine: AsyncEngine, inline_handlers: InlineHandlers
) -> None:
    sku, batchref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    await insert_product(engine, sku, batchref, 10)

    async def fail(event: events.Event, uow: AbstractUnitOfWork) -> None:
        raise Boom

    failing: InlineHandlers = {
        **inline_handlers,
        events.Allocated: {**inline_handlers[events.Allocated], "fail": fail},
    }
    uow = SqlUnitOfWork(engine, failing, AFTER_COMMIT)

    async def allocate_with_a_failing_handler() -> None:
        async with uow:
            product = await uow.products.get(sku, orderid=orderid)
            assert product is not None
            product.allocate(model.OrderLine(orderid, sku, 3))
            await uow.commit()

    with pytest.raises(Boom):
        await allocate_with_a_failing_handler()

    assert uow.committed_events == []
    assert await batch_state(engine, batchref) == (0, 0)
    assert await viewed_allocation(engine, orderid, sku) is None
    assert await outbox_types(engine, sku) == []


async def test_what_follows_a_commit_is_a_transaction_of_its_own(engine: AsyncEngine) -> None:
    sku, later = random_ref("sku"), random_ref("later")
    async with SqlUnitOfWork(engine) as uow:
        uow.products.add(model.Product(sku, [model.Batch(random_ref("batch"), sku, 10, None)]))
        await uow.commit()
        # Written after the commit and never committed: rolled back on leaving.
        await uow.tx.execute(tables.products.insert().values(sku=later, version_number=0))

    assert await product_count(engine, sku) == 1
    assert await product_count(engine, later) == 0


async def test_a_duplicate_product_is_a_concurrency_error(engine: AsyncEngine) -> None:
    sku = random_ref("sku")
    await insert_product(engine, sku, random_ref("batch"), 10)

    async def add_again() -> None:
        async with SqlUnitOfWork(engine) as uow:
            uow.products.add(model.Product(sku, [model.Batch(random_ref("b"), sku, 5, None)]))
            await uow.commit()

    with pytest.raises(ConcurrencyError) as caught:
        await add_again()

    cause = caught.value.__cause__
    # Through SQLAlchemy on SQLite, from asyncpg itself on PostgreSQL.
    assert isinstance(cause, IntegrityError) or sqlstate_of(caught.value) == "23505"
    assert await product_count(engine, sku) == 1


async def test_concurrent_creations_of_one_product_let_exactly_one_win(
    engine: AsyncEngine,
) -> None:
    sku = random_ref("sku")
    refs = [random_ref("batch") for _ in range(2)]

    async def create(ref: str) -> None:
        await insert_product(engine, sku, ref, 10)

    outcomes = await asyncio.gather(*(create(ref) for ref in refs), return_exceptions=True)

    assert sorted(type(o).__name__ for o in outcomes) == ["ConcurrencyError", "NoneType"]
    assert await product_count(engine, sku) == 1
    winner = refs[outcomes.index(None)]
    assert [await batch_state(engine, ref) for ref in refs].count(None) == 1
    assert await batch_state(engine, winner) == (0, 0)


async def test_a_stale_product_version_is_a_concurrency_error(engine: AsyncEngine) -> None:
    sku, batchref = random_ref("sku"), random_ref("batch")
    first, second = random_ref("first"), random_ref("second")
    await insert_product(engine, sku, batchref, 10)

    async def allocate_on_a_stale_product() -> None:
        async with SqlUnitOfWork(engine) as stale:
            product = await stale.products.get(sku, orderid=second)
            assert product is not None
            # Let go of the lock but keep the loaded state, as if the lock had
            # never been taken: someone else gets to change the product.
            await stale.tx.commit()
            await allocate(engine, sku, first, 4)
            product.allocate(model.OrderLine(second, sku, 5))
            await stale.commit()

    with pytest.raises(ConcurrencyError) as caught:
        await allocate_on_a_stale_product()

    assert isinstance(caught.value.__cause__, StaleDataError)
    assert await batch_state(engine, batchref) == (4, 4)


async def test_writers_of_one_product_wait_for_each_other(engine: AsyncEngine) -> None:
    sku, batchref = random_ref("sku"), random_ref("batch")
    first, second = random_ref("first"), random_ref("second")
    await insert_product(engine, sku, batchref, 10)

    async with SqlUnitOfWork(engine) as holder:
        product = await holder.products.get(sku, orderid=first)
        assert product is not None
        task = asyncio.create_task(allocate(engine, sku, second, 5))
        # On SQLite the second writer waits in BEGIN IMMEDIATE, where it cannot
        # be seen waiting; the outcome below still shows no update was lost.
        if engine.dialect.name == "postgresql":
            pid = await holder.tx.scalar(text("SELECT pg_backend_pid()"))
            await eventually(lambda: is_blocking(engine, pid), 10.0, "the second writer blocked")
        assert not task.done()
        product.allocate(model.OrderLine(first, sku, 4))
        await holder.commit()
    await task

    assert await batch_state(engine, batchref) == (9, 9)


@pytest.fixture
async def deferred_sqlite(sqlite_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine that begins SQLite transactions as readers, as the read engine does."""
    engine = build_engine(sqlite_url, writer=False)
    try:
        yield engine
    finally:
        await engine.dispose()


async def test_sqlite_database_is_locked_is_a_concurrency_error(
    deferred_sqlite: AsyncEngine,
) -> None:
    sku, batchref = random_ref("sku"), random_ref("batch")
    first, second = random_ref("first"), random_ref("second")
    await insert_product(deferred_sqlite, sku, batchref, 10)

    async def allocate_from_an_old_snapshot() -> None:
        async with SqlUnitOfWork(deferred_sqlite) as late:
            product = await late.products.get(sku, orderid=second)
            assert product is not None
            await allocate(deferred_sqlite, sku, first, 4)
            # This reader's snapshot is older than the write just committed.
            product.allocate(model.OrderLine(second, sku, 5))
            await late.commit()

    with pytest.raises(ConcurrencyError) as caught:
        await allocate_from_an_old_snapshot()

    assert isinstance(caught.value.__cause__, OperationalError)
    assert "database is locked" in str(caught.value)
    assert await batch_state(deferred_sqlite, batchref) == (4, 4)


def sqlstate_of(error: BaseException) -> str | None:
    """The SQLSTATE the driver gave, through SQLAlchemy's wrapping if any."""
    assert isinstance(error, ConcurrencyError)
    seen: list[BaseException] = []
    current: BaseException | None = error.__cause__
    while current is not None and current not in seen:
        seen.append(current)
        sqlstate = getattr(current, "sqlstate", None)
        if sqlstate is not None:
            return str(sqlstate)
        orig = getattr(current, "orig", None)
        current = current.__cause__ or (orig if isinstance(orig, BaseException) else None)
    return None


@pytest.mark.postgres
async def test_postgres_lock_timeout_is_a_concurrency_error(postgres_engine: AsyncEngine) -> None:
    sku = random_ref("sku")
    await insert_product(postgres_engine, sku, random_ref("batch"), 10)

    async def get_impatiently() -> None:
        async with SqlUnitOfWork(postgres_engine) as uow:
            await uow.tx.execute(text("SET LOCAL lock_timeout = '50ms'"))
            await uow.products.get(sku)

    async with SqlUnitOfWork(postgres_engine) as holder:
        assert await holder.products.get(sku) is not None
        with pytest.raises(ConcurrencyError) as caught:
            await get_impatiently()

    assert sqlstate_of(caught.value) == "55P03"


@pytest.mark.postgres
async def test_postgres_deadlock_is_a_concurrency_error(postgres_engine: AsyncEngine) -> None:
    skus = [random_ref("sku"), random_ref("sku")]
    for sku in skus:
        await insert_product(postgres_engine, sku, random_ref("batch"), 10)
    both_locked = asyncio.Barrier(2)

    async def lock(first: str, then: str) -> None:
        async with SqlUnitOfWork(postgres_engine) as uow:
            await uow.products.get(first)
            await both_locked.wait()
            await uow.products.get(then)
            await uow.commit()

    outcomes = await asyncio.gather(
        lock(skus[0], skus[1]), lock(skus[1], skus[0]), return_exceptions=True
    )

    [error] = [o for o in outcomes if o is not None]
    assert sqlstate_of(error) == "40P01"
