"""The SQLAlchemy repository against a real database: what it saves and what it loads."""

from __future__ import annotations

from datetime import date

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.adapters import orm
from app.adapters.repository import SqlAlchemyRepository
from app.domain import events, model
from tests.conftest import random_ref


async def add_product(
    session_factory: async_sessionmaker[AsyncSession],
    sku: str,
    batches: dict[str, int],
    lines: dict[str, int] | None = None,
) -> None:
    """Save a product with ``batches`` (ref: qty) and allocate ``lines`` (orderid: qty)."""
    async with session_factory() as session:
        product = model.Product(
            sku, [model.Batch(ref, sku, qty, None) for ref, qty in batches.items()]
        )
        for orderid, qty in (lines or {}).items():
            product.allocate(model.OrderLine(orderid, sku, qty))
        SqlAlchemyRepository(session).add(product)
        await session.commit()


async def allocation_rows(
    session_factory: async_sessionmaker[AsyncSession], orderids: list[str]
) -> list[tuple[str, str, int, str]]:
    """(orderid, sku, qty, batchref) of every allocation row of ``orderids``."""
    lines, allocs, batches = orm.order_lines.c, orm.allocations.c, orm.batches.c
    query = (
        select(lines.orderid, lines.sku, lines.qty, batches.reference)
        .join(orm.allocations, allocs.orderline_id == lines.id)
        .join(orm.batches, batches.id == allocs.batch_id)
        .where(lines.orderid.in_(orderids))
        .order_by(lines.orderid)
    )
    async with session_factory() as session:
        return [(r.orderid, r.sku, r.qty, r.reference) for r in await session.execute(query)]


async def order_line_count(
    session_factory: async_sessionmaker[AsyncSession], orderids: list[str]
) -> int:
    async with session_factory() as session:
        count = await session.scalar(
            select(func.count()).where(orm.order_lines.c.orderid.in_(orderids))
        )
        return count or 0


async def test_saves_a_product_with_its_batches_and_gets_it_back(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    sku, early, late = random_ref("sku"), random_ref("early"), random_ref("late")
    async with session_factory() as session:
        repo = SqlAlchemyRepository(session)
        repo.add(
            model.Product(
                sku,
                [
                    model.Batch(early, sku, 100, date(2011, 1, 1)),
                    model.Batch(late, sku, 50, None),
                ],
                version_number=3,
            )
        )
        await session.commit()

    async with session_factory() as session:
        repo = SqlAlchemyRepository(session)
        product = await repo.get(sku)
        assert product is not None
        assert product.sku == sku
        assert product.version_number == 3
        assert {
            b.reference: (b.sku, b.purchased_quantity, b.allocated_quantity, b.eta, b.allocations)
            for b in product.batches
        } == {
            early: (sku, 100, 0, date(2011, 1, 1), set()),
            late: (sku, 50, 0, None, set()),
        }
        assert repo.seen == {product}


async def test_saves_allocations_and_bumps_the_version(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    sku, batchref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    await add_product(session_factory, sku, {batchref: 20})

    async with session_factory() as session:
        product = await SqlAlchemyRepository(session).get(sku, orderid=orderid)
        assert product is not None
        assert product.allocate(model.OrderLine(orderid, sku, 7)) == batchref
        await session.commit()

    assert await allocation_rows(session_factory, [orderid]) == [(orderid, sku, 7, batchref)]
    async with session_factory() as session:
        product = await SqlAlchemyRepository(session).get(sku)
        assert product is not None
        assert product.version_number == 1
        [batch] = product.batches
        assert batch.allocated_quantity == 7


async def test_get_with_an_orderid_loads_only_that_orders_line(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    sku, batch1, batch2 = random_ref("sku"), random_ref("batch1"), random_ref("batch2")
    mine, other, third = random_ref("mine"), random_ref("other"), random_ref("third")
    # Lines go to the first batch that can take them: ``third`` overflows to batch2.
    await add_product(session_factory, sku, {batch1: 10, batch2: 10}, {mine: 3, other: 5, third: 4})

    async with session_factory() as session:
        product = await SqlAlchemyRepository(session).get(sku, orderid=mine)
        assert product is not None
        by_ref = {b.reference: b for b in product.batches}
        assert by_ref[batch1].allocations == {model.OrderLine(mine, sku, 3)}
        assert by_ref[batch1].allocated_quantity == 8
        assert by_ref[batch2].allocations == set()
        assert by_ref[batch2].allocated_quantity == 4


async def test_get_without_an_orderid_loads_no_lines(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    sku, batchref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    await add_product(session_factory, sku, {batchref: 10}, {orderid: 2})

    async with session_factory() as session:
        product = await SqlAlchemyRepository(session).get(sku)
        assert product is not None
        [batch] = product.batches
        assert batch.allocations == set()
        assert batch.allocated_quantity == 2


async def test_allocating_a_held_line_again_changes_nothing(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    sku, batchref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    await add_product(session_factory, sku, {batchref: 10}, {orderid: 2})

    async with session_factory() as session:
        product = await SqlAlchemyRepository(session).get(sku, orderid=orderid)
        assert product is not None
        version = product.version_number
        assert product.allocate(model.OrderLine(orderid, sku, 2)) == batchref
        assert product.events == []
        assert product.version_number == version
        await session.commit()

    assert await allocation_rows(session_factory, [orderid]) == [(orderid, sku, 2, batchref)]


async def test_get_by_batchref_loads_every_line_of_that_batch_only(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    sku, batch1, batch2 = random_ref("sku"), random_ref("batch1"), random_ref("batch2")
    o1, o2, o3 = random_ref("o1"), random_ref("o2"), random_ref("o3")
    await add_product(session_factory, sku, {batch1: 10, batch2: 10}, {o1: 4, o2: 5, o3: 6})

    async with session_factory() as session:
        repo = SqlAlchemyRepository(session)
        product = await repo.get_by_batchref(batch1)
        assert product is not None
        assert product.sku == sku
        assert repo.seen == {product}
        by_ref = {b.reference: b for b in product.batches}
        assert set(by_ref) == {batch1, batch2}
        assert by_ref[batch1].allocations == {
            model.OrderLine(o1, sku, 4),
            model.OrderLine(o2, sku, 5),
        }
        assert by_ref[batch1].allocated_quantity == 9
        assert by_ref[batch2].allocations == set()
        assert by_ref[batch2].allocated_quantity == 6


async def test_deallocating_deletes_the_allocation_and_the_order_line(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    sku, batchref = random_ref("sku"), random_ref("batch")
    o1, o2 = random_ref("o1"), random_ref("o2")
    await add_product(session_factory, sku, {batchref: 10}, {o1: 4, o2: 4})

    async with session_factory() as session:
        product = await SqlAlchemyRepository(session).get_by_batchref(batchref)
        assert product is not None
        product.change_batch_quantity(batchref, 5)  # one of the two lines must go
        [deallocated] = [e for e in product.events if isinstance(e, events.Deallocated)]
        await session.commit()

    kept = o2 if deallocated.orderid == o1 else o1
    assert await allocation_rows(session_factory, [o1, o2]) == [(kept, sku, 4, batchref)]
    assert await order_line_count(session_factory, [deallocated.orderid]) == 0
    async with session_factory() as session:
        product = await SqlAlchemyRepository(session).get_by_batchref(batchref)
        assert product is not None
        [batch] = product.batches
        assert (batch.purchased_quantity, batch.allocated_quantity) == (5, 4)
        assert batch.allocations == {model.OrderLine(kept, sku, 4)}


async def test_deallocating_every_line_leaves_no_rows(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    sku, batchref = random_ref("sku"), random_ref("batch")
    orders = [random_ref("order") for _ in range(3)]
    await add_product(session_factory, sku, {batchref: 10}, dict.fromkeys(orders, 2))

    async with session_factory() as session:
        product = await SqlAlchemyRepository(session).get_by_batchref(batchref)
        assert product is not None
        product.change_batch_quantity(batchref, 0)
        await session.commit()

    assert await allocation_rows(session_factory, orders) == []
    assert await order_line_count(session_factory, orders) == 0


async def test_get_returns_none_for_an_unknown_sku_or_batchref(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    async with session_factory() as session:
        repo = SqlAlchemyRepository(session)
        assert await repo.get(random_ref("sku")) is None
        assert await repo.get(random_ref("sku"), orderid=random_ref("order")) is None
        assert await repo.get_by_batchref(random_ref("batch")) is None
        assert repo.seen == set()
