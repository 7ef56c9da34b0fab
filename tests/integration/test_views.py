"""The read side: projections written in the command's own transaction, and the queries on them.

Commands run here as the service runs them, through their handlers on a
unit of work with the inline handlers: a read right after the commit must
see the change. The projection rows carry the product version they reflect,
so an allocation event applied late or twice changes nothing.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable
from datetime import date
from functools import partial
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app import views
from app.adapters import tables
from app.adapters.projections import SqlReadModel
from app.adapters.read_source import ReadSource
from app.adapters.rebuild import rebuild_views
from app.adapters.transactions import transaction
from app.domain import commands, events
from app.service_layer import handlers
from app.service_layer.unit_of_work import InlineHandlers, SqlUnitOfWork
from tests.support.refs import random_ref

Write = Callable[[commands.Command], Awaitable[list[events.Event]]]


@pytest.fixture
def write(engine: AsyncEngine, inline_handlers: InlineHandlers) -> Write:
    """Run a command as the bus does (without retries); returns the events it committed."""
    command_handlers: dict[type[commands.Command], Any] = {
        commands.CreateBatch: handlers.add_batch,
        commands.Allocate: handlers.allocate,
        commands.ChangeBatchQuantity: handlers.change_batch_quantity,
    }

    async def run(command: commands.Command) -> list[events.Event]:
        # No after-commit handlers: the read side needs no outbox.
        uow = SqlUnitOfWork(engine, inline_handlers)
        await command_handlers[type(command)](command, uow)
        return uow.committed_events

    return run


async def allocate(write: Write, orderid: str, sku: str, qty: int) -> str | None:
    """The batch the line went to (None: out of stock)."""
    committed = await write(commands.Allocate(orderid, sku, qty))
    return next((e.batchref for e in committed if isinstance(e, events.Allocated)), None)


async def apply(engine: AsyncEngine, change: Callable[[SqlReadModel], Awaitable[None]]) -> None:
    """Apply ``change`` to the read model in a transaction of its own, as a late event would."""
    tx = transaction(engine)
    try:
        await change(SqlReadModel(tx))
        await tx.commit()
    finally:
        await tx.close()


async def rows(engine: AsyncEngine, query: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list(await conn.execute(query))


async def allocation_row(
    engine: AsyncEngine, orderid: str, sku: str
) -> tuple[str | None, int] | None:
    """(batchref, version) of the order's line of ``sku`` in the projection, tombstones too."""
    v = tables.allocations_view.c
    found = await rows(
        engine, select(v.batchref, v.version).where(v.orderid == orderid, v.sku == sku)
    )
    return None if not found else (found[0].batchref, found[0].version)


async def product_version(engine: AsyncEngine, sku: str) -> int:
    [(version,)] = await rows(
        engine, select(tables.products.c.version_number).where(tables.products.c.sku == sku)
    )
    assert isinstance(version, int)
    return version


async def batch_view_version(engine: AsyncEngine, ref: str) -> int:
    [(version,)] = await rows(
        engine, select(tables.batches_view.c.version).where(tables.batches_view.c.reference == ref)
    )
    assert isinstance(version, int)
    return version


async def placement_in_write_model(engine: AsyncEngine, orderid: str) -> list[dict[str, str]]:
    b, a, line = tables.batches.c, tables.allocations.c, tables.order_lines.c
    found = await rows(
        engine,
        select(line.sku, b.reference)
        .join(tables.allocations, a.orderline_id == line.id)
        .join(tables.batches, b.id == a.batch_id)
        .where(line.orderid == orderid)
        .order_by(line.sku),
    )
    return [{"sku": sku, "batchref": ref} for sku, ref in found]


async def test_an_allocation_is_in_the_views_as_soon_as_its_command_commits(
    engine: AsyncEngine, write: Write
) -> None:
    orderid, sku, batchref = random_ref("order"), random_ref("sku"), random_ref("batch")
    await write(commands.CreateBatch(batchref, sku, 20))

    assert await allocate(write, orderid, sku, 3) == batchref

    assert await views.allocations(ReadSource(engine), orderid) == [
        {"sku": sku, "batchref": batchref}
    ]
    assert await views.allocation(ReadSource(engine), orderid, sku) == {
        "sku": sku,
        "batchref": batchref,
    }
    assert await allocation_row(engine, orderid, sku) == (
        batchref,
        await product_version(engine, sku),
    )
    batch = await views.batch(ReadSource(engine), batchref)
    assert batch is not None
    assert (batch["purchased"], batch["allocated"], batch["available"]) == (20, 3, 17)


async def test_allocations_lists_every_sku_of_the_order_and_no_other_order(
    engine: AsyncEngine, write: Write
) -> None:
    orderid, other_order = random_ref("order"), random_ref("other")
    sku_b, sku_a = random_ref("sku-b"), random_ref("sku-a")
    batch_b, batch_a = random_ref("batch-b"), random_ref("batch-a")
    await write(commands.CreateBatch(batch_b, sku_b, 20))
    await write(commands.CreateBatch(batch_a, sku_a, 20))
    for order, sku in [(orderid, sku_b), (orderid, sku_a), (other_order, sku_a)]:
        await allocate(write, order, sku, 2)

    assert await views.allocations(ReadSource(engine), orderid) == [
        {"sku": sku_a, "batchref": batch_a},
        {"sku": sku_b, "batchref": batch_b},
    ]


async def test_a_reallocated_line_shows_its_new_batch_at_once(
    engine: AsyncEngine, write: Write
) -> None:
    orderid, sku = random_ref("order"), random_ref("sku")
    first, second = random_ref("first"), random_ref("second")
    await write(commands.CreateBatch(first, sku, 10))
    await write(commands.CreateBatch(second, sku, 10, date(2011, 1, 1)))
    assert await allocate(write, orderid, sku, 10) == first

    committed = await write(commands.ChangeBatchQuantity(first, 0))

    assert [type(e) for e in committed] == [
        events.BatchQuantityChanged,
        events.Deallocated,
        events.Allocated,
    ]
    assert await views.allocations(ReadSource(engine), orderid) == [
        {"sku": sku, "batchref": second}
    ]
    assert await allocation_row(engine, orderid, sku) == (
        second,
        await product_version(engine, sku),
    )
    stock = await views.product(ReadSource(engine), sku)
    assert stock is not None
    assert (stock["available_now"], stock["incoming"]) == (0, 0)


@pytest.mark.parametrize("behind", [0, 1], ids=["repeated", "older"])
async def test_an_allocation_event_of_an_older_or_the_same_version_leaves_the_row_alone(
    engine: AsyncEngine, write: Write, behind: int
) -> None:
    orderid, sku = random_ref("order"), random_ref("sku")
    batchref, stale = random_ref("batch"), random_ref("stale")
    await write(commands.CreateBatch(batchref, sku, 10))
    await allocate(write, orderid, sku, 4)
    version = await product_version(engine, sku)

    await apply(engine, lambda rm: rm.allocation_changed(orderid, sku, stale, version - behind))
    await apply(engine, lambda rm: rm.allocation_changed(orderid, sku, None, version - behind))

    assert await views.allocations(ReadSource(engine), orderid) == [
        {"sku": sku, "batchref": batchref}
    ]
    assert await allocation_row(engine, orderid, sku) == (batchref, version)


async def test_a_deallocated_line_becomes_a_hidden_tombstone(
    engine: AsyncEngine, write: Write
) -> None:
    orderid, sku, batchref = random_ref("order"), random_ref("sku"), random_ref("batch")
    await write(commands.CreateBatch(batchref, sku, 10))
    await allocate(write, orderid, sku, 8)

    committed = await write(commands.ChangeBatchQuantity(batchref, 5))

    assert events.OutOfStock in {type(e) for e in committed}  # reallocation found no stock
    assert await views.allocations(ReadSource(engine), orderid) == []
    assert await views.allocation(ReadSource(engine), orderid, sku) is None
    assert await allocation_row(engine, orderid, sku) == (
        None,
        await product_version(engine, sku),
    )
    batch = await views.batch(ReadSource(engine), batchref)
    assert batch is not None
    assert (batch["purchased"], batch["allocated"], batch["available"]) == (5, 0, 5)


async def test_a_late_allocation_event_does_not_resurrect_a_tombstone(
    engine: AsyncEngine, write: Write
) -> None:
    orderid, sku, batchref = random_ref("order"), random_ref("sku"), random_ref("batch")
    await write(commands.CreateBatch(batchref, sku, 10))
    [allocated] = [
        e
        for e in await write(commands.Allocate(orderid, sku, 8))
        if isinstance(e, events.Allocated)
    ]
    await write(commands.ChangeBatchQuantity(batchref, 5))
    tombstone = await allocation_row(engine, orderid, sku)

    # The Allocated event delivered again, after its Deallocated.
    await apply(
        engine,
        lambda rm: rm.allocation_changed(orderid, sku, allocated.batchref, allocated.version),
    )

    assert await views.allocations(ReadSource(engine), orderid) == []
    assert await allocation_row(engine, orderid, sku) == tombstone


async def test_a_newer_allocation_replaces_a_tombstone(engine: AsyncEngine, write: Write) -> None:
    orderid, sku, batchref = random_ref("order"), random_ref("sku"), random_ref("batch")
    await write(commands.CreateBatch(batchref, sku, 10))
    await allocate(write, orderid, sku, 8)
    await write(commands.ChangeBatchQuantity(batchref, 5))
    assert await views.allocations(ReadSource(engine), orderid) == []

    await write(commands.ChangeBatchQuantity(batchref, 10))
    assert await allocate(write, orderid, sku, 8) == batchref

    assert await views.allocations(ReadSource(engine), orderid) == [
        {"sku": sku, "batchref": batchref}
    ]


def allocation_changes(committed: Iterable[events.Event]) -> list[tuple[str, str | None, int]]:
    """(orderid, batchref, version) the read model was given for each line's change."""
    changes: list[tuple[str, str | None, int]] = []
    for event in committed:
        if isinstance(event, events.Allocated):
            changes.append((event.orderid, event.batchref, event.version))
        elif isinstance(event, events.Deallocated):
            changes.append((event.orderid, None, event.version))
    return changes


async def replay(
    orderid: str, sku: str, batchref: str | None, version: int, read_model: SqlReadModel
) -> None:
    await read_model.allocation_changed(orderid, sku, batchref, version)


async def test_replayed_allocation_events_in_any_order_converge_on_the_write_model(
    engine: AsyncEngine, write: Write
) -> None:
    sku, in_stock, shipment = random_ref("sku"), random_ref("stock"), random_ref("ship")
    orders = [random_ref("order") for _ in range(4)]
    history = await write(commands.CreateBatch(in_stock, sku, 30))
    history += await write(commands.CreateBatch(shipment, sku, 20, date(2011, 1, 1)))
    for orderid in orders:
        history += await write(commands.Allocate(orderid, sku, 10))
    # One line moves to the shipment (a Deallocated, then an Allocated), one
    # more is left with none.
    history += await write(commands.ChangeBatchQuantity(in_stock, 15))
    for orderid in orders:
        assert await views.allocations(
            ReadSource(engine), orderid
        ) == await placement_in_write_model(engine, orderid)
    before = {orderid: await allocation_row(engine, orderid, sku) for orderid in orders}
    assert sorted(str(row[0]) for row in before.values() if row is not None) == sorted(
        [in_stock, shipment, shipment, "None"]
    )

    # Every allocation event of that history delivered again, late and out of order.
    replays = allocation_changes(history) * 2
    random.shuffle(replays)
    for orderid, batchref, version in replays:
        await apply(engine, partial(replay, orderid, sku, batchref, version))

    for orderid in orders:
        assert await views.allocations(
            ReadSource(engine), orderid
        ) == await placement_in_write_model(engine, orderid)
        assert await allocation_row(engine, orderid, sku) == before[orderid]


async def test_a_created_batch_is_in_the_views_at_once(engine: AsyncEngine, write: Write) -> None:
    sku, batchref, later = random_ref("sku"), random_ref("batch"), random_ref("later")

    await write(commands.CreateBatch(batchref, sku, 20, date(2011, 1, 1)))
    await write(commands.CreateBatch(later, sku, 5))

    assert await views.batch(ReadSource(engine), batchref) == {
        "reference": batchref,
        "sku": sku,
        "eta": date(2011, 1, 1),
        "purchased": 20,
        "allocated": 0,
        "held": 0,
        "available": 20,
    }
    assert await batch_view_version(engine, batchref) == 1
    assert await batch_view_version(engine, later) == 2
    assert await views.product(ReadSource(engine), sku) == {
        "sku": sku,
        "available_now": 5,
        "incoming": 20,
        "batches": [
            {"reference": later, "eta": None, "available": 5},
            {"reference": batchref, "eta": date(2011, 1, 1), "available": 20},
        ],
    }


async def test_the_batch_view_follows_later_changes(engine: AsyncEngine, write: Write) -> None:
    sku, batchref = random_ref("sku"), random_ref("batch")
    await write(commands.CreateBatch(batchref, sku, 20))

    await write(commands.ChangeBatchQuantity(batchref, 12))
    await allocate(write, random_ref("order"), sku, 5)

    batch = await views.batch(ReadSource(engine), batchref)
    assert batch is not None
    assert (batch["purchased"], batch["allocated"], batch["available"]) == (12, 5, 7)
    assert await batch_view_version(engine, batchref) == await product_version(engine, sku) == 3


async def test_a_batch_added_again_leaves_a_newer_row_alone(engine: AsyncEngine) -> None:
    sku, batchref = random_ref("sku"), random_ref("batch")
    async with engine.begin() as conn:
        # As written once the product had reached a later version.
        await conn.execute(
            insert(tables.batches_view).values(
                reference=batchref, sku=sku, eta=None, purchased=30, allocated=2, version=5
            )
        )

    await apply(engine, lambda rm: rm.batch_added(batchref, sku, None, 20, 4))
    await apply(engine, lambda rm: rm.batch_added(batchref, sku, None, 20, 5))

    batch = await views.batch(ReadSource(engine), batchref)
    assert batch is not None
    assert (batch["purchased"], batch["allocated"]) == (30, 2)
    assert await batch_view_version(engine, batchref) == 5


async def test_unknown_batches_skus_and_orders_are_not_in_the_views(engine: AsyncEngine) -> None:
    assert await views.batch(ReadSource(engine), random_ref("batch")) is None
    assert await views.product(ReadSource(engine), random_ref("sku")) is None
    assert await views.allocations(ReadSource(engine), random_ref("order")) == []
    assert (
        await views.allocation(ReadSource(engine), random_ref("order"), random_ref("sku")) is None
    )


async def test_the_views_equal_a_rebuild_from_the_write_model(
    engine: AsyncEngine, write: Write
) -> None:
    sku = random_ref("sku")
    refs = [random_ref(f"batch{i}") for i in range(3)]
    for day, ref in enumerate(refs, start=1):
        await write(commands.CreateBatch(ref, sku, 10, date(2011, 1, day)))
    orders = {random_ref("order"): 1 + i % 4 for i in range(12)}
    for orderid, qty in orders.items():
        await allocate(write, orderid, sku, qty)
    for ref, qty in zip(refs, [3, 8, 1], strict=True):
        await write(commands.ChangeBatchQuantity(ref, qty))  # deallocations, reallocations

    b, a = tables.batches_view.c, tables.allocations_view.c
    batches = select(b.reference, b.eta, b.purchased, b.allocated).where(b.sku == sku)
    allocations = select(a.orderid, a.batchref).where(a.sku == sku, a.batchref.is_not(None))

    async def read_views(conn: Any) -> tuple[set[Any], set[Any]]:
        return (
            {tuple(r) for r in await conn.execute(batches)},
            {tuple(r) for r in await conn.execute(allocations)},
        )

    async with engine.connect() as conn:
        maintained = await read_views(conn)
        await conn.rollback()
        async with conn.begin() as rebuilding:
            await rebuild_views(conn, lambda *_: None)
            rebuilt = await read_views(conn)
            await rebuilding.rollback()  # leave the other tests' rows as they were

    assert maintained == rebuilt
    assert len(maintained[0]) == 3
    assert maintained[1]


async def test_the_order_read_tells_an_out_of_stock_line_from_an_allocated_one(
    engine: AsyncEngine, write: Write
) -> None:
    orderid, ref, more = random_ref("order"), random_ref("batch"), random_ref("batch")
    table, chair = random_ref("TABLE"), random_ref("CHAIR")
    await write(commands.CreateBatch(ref, table, 10, None))
    await write(commands.CreateBatch(random_ref("batch"), chair, 1, None))
    reads = ReadSource(engine)

    assert await allocate(write, orderid, table, 2) == ref
    assert await allocate(write, orderid, chair, 5) is None  # accepted, not allocated

    assert await views.order(reads, orderid) == {
        "orderid": orderid,
        "lines": [  # by sku: CHAIR-... before TABLE-...
            {"sku": chair, "state": "out_of_stock", "batchref": None},
            {"sku": table, "state": "allocated", "batchref": ref},
        ],
    }
    # The book's read is unchanged: only what is allocated.
    assert await views.allocations(reads, orderid) == [{"sku": table, "batchref": ref}]

    # Stock arrives; the same line sent again is allocated, as any new one.
    await write(commands.CreateBatch(more, chair, 5, None))
    assert await allocate(write, orderid, chair, 5) == more
    order = await views.order(reads, orderid)
    assert order is not None
    assert {"sku": chair, "state": "allocated", "batchref": more} in order["lines"]
    assert len(order["lines"]) == 2
    assert await views.order(reads, random_ref("order")) is None
