"""The SQLAlchemy unit of work: what it commits, what it rolls back, which errors it retries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from app.adapters import orm
from app.adapters.database import build_engine
from app.domain import model
from app.service_layer.unit_of_work import ConcurrencyError, SqlAlchemyUnitOfWork
from tests.conftest import random_ref


class Boom(Exception):
    pass


async def insert_product(
    session_factory: async_sessionmaker[AsyncSession], sku: str, batchref: str, qty: int
) -> None:
    async with SqlAlchemyUnitOfWork(session_factory) as uow:
        uow.products.add(model.Product(sku, [model.Batch(batchref, sku, qty, None)]))
        await uow.commit()


async def batch_state(
    session_factory: async_sessionmaker[AsyncSession], ref: str
) -> tuple[int, int] | None:
    """(allocated_quantity, sum of the qty of its allocation rows) of batch ``ref``."""
    b, a, lines = orm.batches.c, orm.allocations.c, orm.order_lines.c
    async with session_factory() as session:
        allocated = await session.scalar(select(b.allocated_quantity).where(b.reference == ref))
        if allocated is None:
            return None
        total = await session.scalar(
            select(func.coalesce(func.sum(lines.qty), 0))
            .join(orm.allocations, a.orderline_id == lines.id)
            .join(orm.batches, b.id == a.batch_id)
            .where(b.reference == ref)
        )
        return allocated, total or 0


async def product_count(session_factory: async_sessionmaker[AsyncSession], sku: str) -> int:
    async with session_factory() as session:
        count = await session.scalar(
            select(func.count()).select_from(orm.products).where(orm.products.c.sku == sku)
        )
        return count or 0


async def allocate(
    session_factory: async_sessionmaker[AsyncSession], sku: str, orderid: str, qty: int
) -> None:
    async with SqlAlchemyUnitOfWork(session_factory) as uow:
        product = await uow.products.get(sku, orderid=orderid)
        assert product is not None
        product.allocate(model.OrderLine(orderid, sku, qty))
        await uow.commit()


async def wait_until(condition: Callable[[], Awaitable[bool]]) -> None:
    # What is awaited is the database's state, which sets no asyncio.Event: poll it.
    async with asyncio.timeout(10):
        while not await condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def is_blocking(session_factory: async_sessionmaker[AsyncSession], pid: object) -> bool:
    """Whether PostgreSQL backend ``pid`` holds a lock another backend waits for."""
    async with session_factory() as session:
        blocked = await session.scalar(
            text("SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"),
            {"pid": pid},
        )
        return bool(blocked)


async def test_commit_persists(session_factory: async_sessionmaker[AsyncSession]) -> None:
    sku, batchref = random_ref("sku"), random_ref("batch")
    await insert_product(session_factory, sku, batchref, 10)

    async with SqlAlchemyUnitOfWork(session_factory) as uow:
        product = await uow.products.get(sku)
        assert product is not None
        assert [b.reference for b in product.batches] == [batchref]


async def test_allocation_committed_through_the_uow_persists(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    sku, batchref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    await insert_product(session_factory, sku, batchref, 10)

    await allocate(session_factory, sku, orderid, 3)

    assert await batch_state(session_factory, batchref) == (3, 3)


async def test_leaving_without_commit_rolls_back(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    sku, batchref = random_ref("sku"), random_ref("batch")
    async with SqlAlchemyUnitOfWork(session_factory) as uow:
        uow.products.add(model.Product(sku, [model.Batch(batchref, sku, 10, None)]))
        await uow.session.flush()

    assert await product_count(session_factory, sku) == 0
    assert await batch_state(session_factory, batchref) is None


async def test_leaving_without_commit_rolls_back_an_allocation(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    sku, batchref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    await insert_product(session_factory, sku, batchref, 10)

    async with SqlAlchemyUnitOfWork(session_factory) as uow:
        product = await uow.products.get(sku, orderid=orderid)
        assert product is not None
        product.allocate(model.OrderLine(orderid, sku, 3))

    assert await batch_state(session_factory, batchref) == (0, 0)


async def test_an_exception_rolls_back_and_is_raised_unchanged(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    sku, batchref = random_ref("sku"), random_ref("batch")

    async def fail_after_writing() -> None:
        async with SqlAlchemyUnitOfWork(session_factory) as uow:
            uow.products.add(model.Product(sku, [model.Batch(batchref, sku, 10, None)]))
            await uow.session.flush()
            raise Boom

    with pytest.raises(Boom):
        await fail_after_writing()

    assert await product_count(session_factory, sku) == 0


async def test_a_duplicate_product_is_a_concurrency_error(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    sku = random_ref("sku")
    await insert_product(session_factory, sku, random_ref("batch"), 10)

    async def add_again() -> None:
        async with SqlAlchemyUnitOfWork(session_factory) as uow:
            uow.products.add(model.Product(sku, [model.Batch(random_ref("b"), sku, 5, None)]))
            await uow.commit()

    with pytest.raises(ConcurrencyError) as caught:
        await add_again()

    assert isinstance(caught.value.__cause__, IntegrityError)
    assert await product_count(session_factory, sku) == 1


async def test_concurrent_creations_of_one_product_let_exactly_one_win(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    sku = random_ref("sku")
    refs = [random_ref("batch") for _ in range(2)]

    async def create(ref: str) -> None:
        await insert_product(session_factory, sku, ref, 10)

    outcomes = await asyncio.gather(*(create(ref) for ref in refs), return_exceptions=True)

    assert sorted(type(o).__name__ for o in outcomes) == ["ConcurrencyError", "NoneType"]
    assert await product_count(session_factory, sku) == 1
    winner = refs[outcomes.index(None)]
    assert [await batch_state(session_factory, ref) for ref in refs].count(None) == 1
    assert await batch_state(session_factory, winner) == (0, 0)


async def test_a_stale_product_version_is_a_concurrency_error(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    sku, batchref = random_ref("sku"), random_ref("batch")
    first, second = random_ref("first"), random_ref("second")
    await insert_product(session_factory, sku, batchref, 10)

    async def allocate_on_a_stale_product() -> None:
        async with SqlAlchemyUnitOfWork(session_factory) as stale:
            product = await stale.products.get(sku, orderid=second)
            assert product is not None
            # Let go of the lock but keep the loaded state, as if the lock had
            # never been taken: someone else gets to change the product.
            await stale.session.commit()
            await allocate(session_factory, sku, first, 4)
            product.allocate(model.OrderLine(second, sku, 5))
            await stale.commit()

    with pytest.raises(ConcurrencyError) as caught:
        await allocate_on_a_stale_product()

    assert isinstance(caught.value.__cause__, StaleDataError)
    assert await batch_state(session_factory, batchref) == (4, 4)


async def test_writers_of_one_product_wait_for_each_other(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    sku, batchref = random_ref("sku"), random_ref("batch")
    first, second = random_ref("first"), random_ref("second")
    await insert_product(session_factory, sku, batchref, 10)

    async with SqlAlchemyUnitOfWork(session_factory) as holder:
        product = await holder.products.get(sku, orderid=first)
        assert product is not None
        task = asyncio.create_task(allocate(session_factory, sku, second, 5))
        # On SQLite the second writer waits in BEGIN IMMEDIATE, where it cannot
        # be seen waiting; the outcome below still shows no update was lost.
        if engine.dialect.name == "postgresql":
            pid = await holder.session.scalar(text("SELECT pg_backend_pid()"))
            await wait_until(lambda: is_blocking(session_factory, pid))
        assert not task.done()
        product.allocate(model.OrderLine(first, sku, 4))
        await holder.commit()
    await task

    assert await batch_state(session_factory, batchref) == (9, 9)


@pytest.fixture
async def deferred_sqlite(sqlite_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions that begin SQLite transactions as readers, as the read engine does."""
    orm.start_mappers()
    engine = build_engine(sqlite_url, writer=False)
    try:
        yield async_sessionmaker(engine, expire_on_commit=False)
    finally:
        await engine.dispose()


async def test_sqlite_database_is_locked_is_a_concurrency_error(
    deferred_sqlite: async_sessionmaker[AsyncSession],
) -> None:
    sku, batchref = random_ref("sku"), random_ref("batch")
    first, second = random_ref("first"), random_ref("second")
    await insert_product(deferred_sqlite, sku, batchref, 10)

    async def allocate_from_an_old_snapshot() -> None:
        async with SqlAlchemyUnitOfWork(deferred_sqlite) as late:
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
    assert isinstance(error, ConcurrencyError)
    cause = error.__cause__
    assert isinstance(cause, DBAPIError)
    # The driver's error, or what the SQLAlchemy adapter wraps, carries it.
    for candidate in (cause.orig, cause.orig and cause.orig.__cause__):
        sqlstate = getattr(candidate, "sqlstate", None)
        if sqlstate is not None:
            return str(sqlstate)
    return None


@pytest.mark.postgres
async def test_postgres_lock_timeout_is_a_concurrency_error(
    postgres_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    sku = random_ref("sku")
    await insert_product(postgres_session_factory, sku, random_ref("batch"), 10)

    async def get_impatiently() -> None:
        async with SqlAlchemyUnitOfWork(postgres_session_factory) as uow:
            await uow.session.execute(text("SET LOCAL lock_timeout = '50ms'"))
            await uow.products.get(sku)

    async with SqlAlchemyUnitOfWork(postgres_session_factory) as holder:
        assert await holder.products.get(sku) is not None
        with pytest.raises(ConcurrencyError) as caught:
            await get_impatiently()

    assert sqlstate_of(caught.value) == "55P03"


@pytest.mark.postgres
async def test_postgres_deadlock_is_a_concurrency_error(
    postgres_session_factory: async_sessionmaker[AsyncSession],
) -> None:
    skus = [random_ref("sku"), random_ref("sku")]
    for sku in skus:
        await insert_product(postgres_session_factory, sku, random_ref("batch"), 10)
    both_locked = asyncio.Barrier(2)

    async def lock(first: str, then: str) -> None:
        async with SqlAlchemyUnitOfWork(postgres_session_factory) as uow:
            await uow.products.get(first)
            await both_locked.wait()
            await uow.products.get(then)
            await uow.commit()

    outcomes = await asyncio.gather(
        lock(skus[0], skus[1]), lock(skus[1], skus[0]), return_exceptions=True
    )

    [error] = [o for o in outcomes if o is not None]
    assert sqlstate_of(error) == "40P01"
