"""The read side: projection upserts guarded by version, and the queries on them."""

from __future__ import annotations

import random
from datetime import date

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app import views
from app.adapters import orm
from app.adapters.projections import SqlAlchemyReadModel
from app.adapters.repository import SqlAlchemyRepository
from app.domain import model
from tests.conftest import random_ref


async def add_product(
    session_factory: async_sessionmaker[AsyncSession], *batches: model.Batch
) -> None:
    """Write a product straight to the write model: no outbox, no events handled."""
    async with session_factory() as session:
        SqlAlchemyRepository(session).add(model.Product(batches[0].sku, list(batches)))
        await session.commit()


async def allocate(
    session_factory: async_sessionmaker[AsyncSession], orderid: str, sku: str, qty: int
) -> str | None:
    async with session_factory() as session:
        product = await SqlAlchemyRepository(session).get(sku, orderid=orderid)
        assert product is not None
        batchref = product.allocate(model.OrderLine(orderid, sku, qty))
        await session.commit()
    return batchref


async def change_quantity(
    session_factory: async_sessionmaker[AsyncSession], ref: str, qty: int
) -> None:
    async with session_factory() as session:
        product = await SqlAlchemyRepository(session).get_by_batchref(ref)
        assert product is not None
        product.change_batch_quantity(ref, qty)
        await session.commit()


async def refresh_allocation(
    session_factory: async_sessionmaker[AsyncSession], orderid: str, sku: str
) -> None:
    async with session_factory() as session:
        await SqlAlchemyReadModel(session).allocation_refreshed(orderid, sku)
        await session.commit()


async def write_allocation_row(
    session_factory: async_sessionmaker[AsyncSession],
    orderid: str,
    sku: str,
    batchref: str | None,
    version: int,
) -> None:
    """A row as written by a refresh that read the product at ``version``."""
    async with session_factory() as session:
        await session.execute(
            insert(orm.allocations_view).values(
                orderid=orderid, sku=sku, batchref=batchref, version=version
            )
        )
        await session.commit()


async def allocation_row(
    session_factory: async_sessionmaker[AsyncSession], orderid: str, sku: str
) -> tuple[str | None, int] | None:
    """(batchref, version) of the order's line of ``sku`` in the projection, tombstones too."""
    v = orm.allocations_view.c
    async with session_factory() as session:
        row = (
            await session.execute(
                select(v.batchref, v.version).where(v.orderid == orderid, v.sku == sku)
            )
        ).one_or_none()
    return None if row is None else (row.batchref, row.version)


async def product_version(session_factory: async_sessionmaker[AsyncSession], sku: str) -> int:
    async with session_factory() as session:
        version: int | None = await session.scalar(
            select(orm.products.c.version_number).where(orm.products.c.sku == sku)
        )
    assert version is not None
    return version


async def placement_in_write_model(
    session_factory: async_sessionmaker[AsyncSession], orderid: str
) -> list[dict[str, str]]:
    b, a, line = orm.batches.c, orm.allocations.c, orm.order_lines.c
    async with session_factory() as session:
        rows = await session.execute(
            select(line.sku, b.reference)
            .join(orm.allocations, a.orderline_id == line.id)
            .join(orm.batches, b.id == a.batch_id)
            .where(line.orderid == orderid)
            .order_by(line.sku)
        )
        return [{"sku": sku, "batchref": ref} for sku, ref in rows]


async def refresh_batch(session_factory: async_sessionmaker[AsyncSession], ref: str) -> None:
    async with session_factory() as session:
        await SqlAlchemyReadModel(session).batch_refreshed(ref)
        await session.commit()


async def batch_view_version(session_factory: async_sessionmaker[AsyncSession], ref: str) -> int:
    async with session_factory() as session:
        version: int | None = await session.scalar(
            select(orm.batches_view.c.version).where(orm.batches_view.c.reference == ref)
        )
    assert version is not None
    return version


async def test_allocation_refreshed_copies_the_line_as_the_write_model_has_it(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    orderid, sku, batchref = random_ref("order"), random_ref("sku"), random_ref("batch")
    await add_product(session_factory, model.Batch(batchref, sku, 20, None))
    await allocate(session_factory, orderid, sku, 3)

    await refresh_allocation(session_factory, orderid, sku)

    assert await views.allocations(engine, orderid) == [{"sku": sku, "batchref": batchref}]
    assert await views.allocation(engine, orderid, sku) == {"sku": sku, "batchref": batchref}
    assert await allocation_row(session_factory, orderid, sku) == (
        batchref,
        await product_version(session_factory, sku),
    )


async def test_allocations_lists_every_sku_of_the_order_and_no_other_order(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    orderid, other_order = random_ref("order"), random_ref("other")
    sku_b, sku_a = random_ref("sku-b"), random_ref("sku-a")
    batch_b, batch_a = random_ref("batch-b"), random_ref("batch-a")
    await add_product(session_factory, model.Batch(batch_b, sku_b, 20, None))
    await add_product(session_factory, model.Batch(batch_a, sku_a, 20, None))
    for order, sku in [(orderid, sku_b), (orderid, sku_a), (other_order, sku_a)]:
        await allocate(session_factory, order, sku, 2)
        await refresh_allocation(session_factory, order, sku)

    assert await views.allocations(engine, orderid) == [
        {"sku": sku_a, "batchref": batch_a},
        {"sku": sku_b, "batchref": batch_b},
    ]


async def test_a_refresh_after_a_newer_version_overwrites_the_allocation(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    orderid, sku = random_ref("order"), random_ref("sku")
    first, second = random_ref("first"), random_ref("second")
    await add_product(
        session_factory,
        model.Batch(first, sku, 10, None),
        model.Batch(second, sku, 10, date(2011, 1, 1)),
    )
    assert await allocate(session_factory, orderid, sku, 10) == first
    await refresh_allocation(session_factory, orderid, sku)

    await change_quantity(session_factory, first, 0)
    assert await allocate(session_factory, orderid, sku, 10) == second
    await refresh_allocation(session_factory, orderid, sku)

    assert await views.allocations(engine, orderid) == [{"sku": sku, "batchref": second}]
    assert await allocation_row(session_factory, orderid, sku) == (
        second,
        await product_version(session_factory, sku),
    )


@pytest.mark.parametrize("ahead", [0, 1], ids=["repeated", "newer"])
async def test_a_refresh_of_an_older_or_the_same_version_leaves_the_row_alone(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession], ahead: int
) -> None:
    orderid, sku = random_ref("order"), random_ref("sku")
    stale, current = random_ref("stale"), random_ref("current")
    await add_product(session_factory, model.Batch(stale, sku, 10, None))
    await allocate(session_factory, orderid, sku, 4)
    version = await product_version(session_factory, sku) + ahead
    # As written by a refresh that saw the product at ``version``: this
    # refresh reads the write model at an older (or that same) version.
    await write_allocation_row(session_factory, orderid, sku, current, version)

    await refresh_allocation(session_factory, orderid, sku)

    assert await views.allocations(engine, orderid) == [{"sku": sku, "batchref": current}]
    assert await allocation_row(session_factory, orderid, sku) == (current, version)


async def test_a_deallocated_line_becomes_a_hidden_tombstone(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    orderid, sku, batchref = random_ref("order"), random_ref("sku"), random_ref("batch")
    await add_product(session_factory, model.Batch(batchref, sku, 10, None))
    await allocate(session_factory, orderid, sku, 8)
    await refresh_allocation(session_factory, orderid, sku)

    await change_quantity(session_factory, batchref, 5)
    await refresh_allocation(session_factory, orderid, sku)

    assert await views.allocations(engine, orderid) == []
    assert await views.allocation(engine, orderid, sku) is None
    assert await allocation_row(session_factory, orderid, sku) == (
        None,
        await product_version(session_factory, sku),
    )


async def test_a_stale_refresh_does_not_resurrect_a_tombstone(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    orderid, sku, batchref = random_ref("order"), random_ref("sku"), random_ref("batch")
    await add_product(session_factory, model.Batch(batchref, sku, 10, None))
    await allocate(session_factory, orderid, sku, 8)
    newer = await product_version(session_factory, sku) + 1
    # The tombstone of a deallocation that a newer refresh has already seen.
    await write_allocation_row(session_factory, orderid, sku, None, newer)

    await refresh_allocation(session_factory, orderid, sku)

    assert await views.allocations(engine, orderid) == []
    assert await allocation_row(session_factory, orderid, sku) == (None, newer)


async def test_a_newer_allocation_replaces_a_tombstone(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    orderid, sku, batchref = random_ref("order"), random_ref("sku"), random_ref("batch")
    await add_product(session_factory, model.Batch(batchref, sku, 10, None))
    await allocate(session_factory, orderid, sku, 8)
    await refresh_allocation(session_factory, orderid, sku)
    await change_quantity(session_factory, batchref, 5)
    await refresh_allocation(session_factory, orderid, sku)
    assert await views.allocations(engine, orderid) == []

    await change_quantity(session_factory, batchref, 10)
    assert await allocate(session_factory, orderid, sku, 8) == batchref
    await refresh_allocation(session_factory, orderid, sku)

    assert await views.allocations(engine, orderid) == [{"sku": sku, "batchref": batchref}]


async def test_replayed_refreshes_in_any_order_converge_on_the_write_model(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    sku, in_stock, shipment = random_ref("sku"), random_ref("stock"), random_ref("ship")
    orders = [random_ref("order") for _ in range(3)]
    await add_product(
        session_factory,
        model.Batch(in_stock, sku, 30, None),
        model.Batch(shipment, sku, 30, date(2011, 1, 1)),
    )
    for orderid in orders:
        await allocate(session_factory, orderid, sku, 10)
        await refresh_allocation(session_factory, orderid, sku)
    # One line moves to the shipment: a Deallocated, then an Allocated.
    await change_quantity(session_factory, in_stock, 25)
    [moved] = [o for o in orders if await placement_in_write_model(session_factory, o) == []]
    await allocate(session_factory, moved, sku, 10)

    # Every event of that history delivered again, late and out of order.
    replays = [orderid for orderid in orders for _ in range(2)] + [moved] * 2
    random.shuffle(replays)
    for orderid in replays:
        await refresh_allocation(session_factory, orderid, sku)

    version = await product_version(session_factory, sku)
    for orderid in orders:
        placed = await placement_in_write_model(session_factory, orderid)
        assert await views.allocations(engine, orderid) == placed
        assert await allocation_row(session_factory, orderid, sku) == (
            placed[0]["batchref"],
            version,
        )
    assert await views.allocations(engine, moved) == [{"sku": sku, "batchref": shipment}]


async def test_refreshing_a_line_the_write_model_lacks_leaves_it_hidden(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    orderid, sku = random_ref("order"), random_ref("sku")
    await add_product(session_factory, model.Batch(random_ref("batch"), sku, 10, None))

    await refresh_allocation(session_factory, orderid, sku)

    assert await views.allocations(engine, orderid) == []
    assert await allocation_row(session_factory, orderid, sku) == (
        None,
        await product_version(session_factory, sku),
    )


async def test_refreshing_a_line_of_an_unknown_sku_writes_nothing(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    orderid, sku = random_ref("order"), random_ref("sku")

    await refresh_allocation(session_factory, orderid, sku)

    assert await allocation_row(session_factory, orderid, sku) is None


async def test_batch_refreshed_copies_the_batch_as_the_write_model_has_it(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    sku, batchref, other = random_ref("sku"), random_ref("batch"), random_ref("other")
    async with session_factory() as session:
        product = model.Product(
            sku,
            [
                model.Batch(batchref, sku, 20, date(2011, 1, 1)),
                model.Batch(other, sku, 20, date(2011, 1, 2)),
            ],
            version_number=6,
        )
        product.allocate(model.OrderLine(random_ref("order"), sku, 3))
        product.allocate(model.OrderLine(random_ref("order"), sku, 4))
        SqlAlchemyRepository(session).add(product)
        await session.commit()

    await refresh_batch(session_factory, batchref)

    assert await views.batch(engine, batchref) == {
        "reference": batchref,
        "sku": sku,
        "eta": date(2011, 1, 1),
        "purchased": 20,
        "allocated": 7,
        "available": 13,
    }
    assert await batch_view_version(session_factory, batchref) == 8
    assert await views.batch(engine, other) is None


async def test_batch_refreshed_follows_later_changes(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    sku, batchref = random_ref("sku"), random_ref("batch")
    async with session_factory() as session:
        SqlAlchemyRepository(session).add(
            model.Product(sku, [model.Batch(batchref, sku, 20, None)], version_number=1)
        )
        await session.commit()
    await refresh_batch(session_factory, batchref)

    async with session_factory() as session:
        product = await SqlAlchemyRepository(session).get_by_batchref(batchref)
        assert product is not None
        product.change_batch_quantity(batchref, 12)
        product.allocate(model.OrderLine(random_ref("order"), sku, 5))
        await session.commit()
    await refresh_batch(session_factory, batchref)

    batch = await views.batch(engine, batchref)
    assert batch is not None
    assert (batch["purchased"], batch["allocated"], batch["available"]) == (12, 5, 7)
    assert await batch_view_version(session_factory, batchref) == 3


async def test_batch_refreshed_leaves_a_newer_row_alone(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    sku, batchref = random_ref("sku"), random_ref("batch")
    async with session_factory() as session:
        SqlAlchemyRepository(session).add(
            model.Product(sku, [model.Batch(batchref, sku, 20, None)], version_number=4)
        )
        # As written by a refresh that saw a later version of the product.
        await session.execute(
            insert(orm.batches_view).values(
                reference=batchref, sku=sku, eta=None, purchased=30, allocated=2, version=5
            )
        )
        await session.commit()

    await refresh_batch(session_factory, batchref)

    batch = await views.batch(engine, batchref)
    assert batch is not None
    assert (batch["purchased"], batch["allocated"]) == (30, 2)
    assert await batch_view_version(session_factory, batchref) == 5


async def test_batch_refreshed_of_an_unknown_batch_writes_nothing(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    batchref = random_ref("batch")
    await refresh_batch(session_factory, batchref)

    assert await views.batch(engine, batchref) is None
