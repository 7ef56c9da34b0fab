"""The read side: projection upserts guarded by version, and the queries on them."""

from __future__ import annotations

from datetime import date

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app import views
from app.adapters import orm
from app.adapters.projections import SqlAlchemyReadModel
from app.adapters.repository import SqlAlchemyRepository
from app.domain import model
from tests.conftest import random_ref


async def set_allocation(
    session_factory: async_sessionmaker[AsyncSession],
    orderid: str,
    sku: str,
    batchref: str | None,
    version: int,
) -> None:
    async with session_factory() as session:
        await SqlAlchemyReadModel(session).allocation_set(orderid, sku, batchref, version)
        await session.commit()


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


async def test_allocation_set_records_an_allocation(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    orderid, sku, batchref = random_ref("order"), random_ref("sku"), random_ref("batch")
    await set_allocation(session_factory, orderid, sku, batchref, 1)

    assert await views.allocations(engine, orderid) == [{"sku": sku, "batchref": batchref}]


async def test_allocations_lists_every_sku_of_the_order_and_no_other_order(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    orderid, other_order = random_ref("order"), random_ref("other")
    sku_b, sku_a = random_ref("sku-b"), random_ref("sku-a")
    await set_allocation(session_factory, orderid, sku_b, "batch-b", 1)
    await set_allocation(session_factory, orderid, sku_a, "batch-a", 1)
    await set_allocation(session_factory, other_order, sku_a, "batch-a", 2)

    assert await views.allocations(engine, orderid) == [
        {"sku": sku_a, "batchref": "batch-a"},
        {"sku": sku_b, "batchref": "batch-b"},
    ]


async def test_a_newer_version_overwrites_the_allocation(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    orderid, sku = random_ref("order"), random_ref("sku")
    await set_allocation(session_factory, orderid, sku, "first", 1)
    await set_allocation(session_factory, orderid, sku, "second", 2)

    assert await views.allocations(engine, orderid) == [{"sku": sku, "batchref": "second"}]


async def test_an_older_or_repeated_version_does_not_overwrite(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    orderid, sku = random_ref("order"), random_ref("sku")
    await set_allocation(session_factory, orderid, sku, "current", 5)
    await set_allocation(session_factory, orderid, sku, "stale", 4)
    await set_allocation(session_factory, orderid, sku, "repeat", 5)

    assert await views.allocations(engine, orderid) == [{"sku": sku, "batchref": "current"}]


async def test_a_tombstone_hides_the_allocation(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    orderid, sku = random_ref("order"), random_ref("sku")
    await set_allocation(session_factory, orderid, sku, "batch", 1)
    await set_allocation(session_factory, orderid, sku, None, 2)

    assert await views.allocations(engine, orderid) == []


async def test_a_stale_allocation_does_not_resurrect_a_tombstone(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    orderid, sku = random_ref("order"), random_ref("sku")
    await set_allocation(session_factory, orderid, sku, None, 3)
    await set_allocation(session_factory, orderid, sku, "late", 2)

    assert await views.allocations(engine, orderid) == []


async def test_a_newer_allocation_replaces_a_tombstone(
    engine: AsyncEngine, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    orderid, sku = random_ref("order"), random_ref("sku")
    await set_allocation(session_factory, orderid, sku, "first", 1)
    await set_allocation(session_factory, orderid, sku, None, 2)
    await set_allocation(session_factory, orderid, sku, "again", 3)

    assert await views.allocations(engine, orderid) == [{"sku": sku, "batchref": "again"}]


async def test_allocations_of_an_unknown_order_is_empty(engine: AsyncEngine) -> None:
    assert await views.allocations(engine, random_ref("order")) == []


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
