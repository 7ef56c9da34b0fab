"""Many messages at once through the real bus, on PostgreSQL: nothing lost, nothing doubled.

Each ``bus.handle`` runs on its own unit of work (one transaction), as
concurrent HTTP requests would; writers of one sku serialise on the product's
row lock, and collisions that slip past it are retried by the bus. The read
models are written in each command's transaction, so they are checked at
once; the after-commit effects (notifications, publishes) once delivery has
run.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterator, Sequence
from datetime import date
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters import tables
from app.config import Settings
from app.container import Container
from app.domain import commands, model
from app.service_layer.messagebus import MessageBus
from tests.support.fakes import FakeNotifications, FakePublisher
from tests.support.outbox import outbox_rows
from tests.support.refs import random_ref

pytestmark = pytest.mark.postgres


@pytest.fixture
def settings(module_database: str) -> Settings:
    return Settings(database_url=module_database, read_database_url=None)


@pytest.fixture
def container_overrides(
    notifications: FakeNotifications, publisher: FakePublisher
) -> dict[str, object]:
    return {"notifications": notifications, "publisher": publisher}


@pytest.fixture
def bus(container: Container) -> MessageBus:
    bus: MessageBus = container.bus()
    return bus


@pytest.fixture
def engine(container: Container) -> AsyncEngine:
    engine: AsyncEngine = container.engine()
    return engine


@pytest.fixture(autouse=True)
def no_handler_fails(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Delivery logs, and retries later, what an after-commit handler raises: none may have."""
    yield
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert failures == [], [r.getMessage() for r in failures]


async def handle_all(bus: MessageBus, messages: Sequence[commands.Command]) -> None:
    outcomes = await asyncio.gather(*(bus.handle(m) for m in messages), return_exceptions=True)
    escaped = [(m, o) for m, o in zip(messages, outcomes, strict=True) if o is not None]
    assert escaped == []


async def deliver_everything(container: Container) -> None:
    """Run delivery passes, as the relay would, until the outbox has nothing due."""
    delivery = container.delivery()
    async with asyncio.timeout(30):
        while await delivery.deliver_due():
            pass


def published_orders(publisher: FakePublisher, sku: str) -> list[str]:
    return sorted(payload["orderid"] for _, payload in publisher.published if payload["sku"] == sku)


async def rows(engine: AsyncEngine, query: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list(await conn.execute(query))


async def batches_of(engine: AsyncEngine, sku: str) -> dict[str, tuple[int, int]]:
    """ref: (purchased_quantity, allocated_quantity) of every batch of ``sku``."""
    b = tables.batches.c
    query = select(b.reference, b.purchased_quantity, b.allocated_quantity).where(b.sku == sku)
    return {
        r.reference: (r.purchased_quantity, r.allocated_quantity) for r in await rows(engine, query)
    }


async def allocated_lines(engine: AsyncEngine, sku: str) -> dict[str, list[tuple[str, int]]]:
    """ref: [(orderid, qty)] of the allocation rows of every batch of ``sku``."""
    b, a, lines = tables.batches.c, tables.allocations.c, tables.order_lines.c
    query = (
        select(b.reference, lines.orderid, lines.qty)
        .join(tables.allocations, a.orderline_id == lines.id)
        .join(tables.batches, b.id == a.batch_id)
        .where(b.sku == sku)
    )
    held: dict[str, list[tuple[str, int]]] = {}
    for r in await rows(engine, query):
        held.setdefault(r.reference, []).append((r.orderid, r.qty))
    return held


async def viewed_allocations(engine: AsyncEngine, sku: str) -> dict[str, str]:
    """orderid: batchref of every allocation of ``sku`` the read model shows."""
    v = tables.allocations_view.c
    query = select(v.orderid, v.batchref).where(v.sku == sku, v.batchref.is_not(None))
    return {r.orderid: r.batchref for r in await rows(engine, query)}


async def viewed_batches(engine: AsyncEngine, sku: str) -> dict[str, tuple[int, int]]:
    v = tables.batches_view.c
    query = select(v.reference, v.purchased, v.allocated).where(v.sku == sku)
    return {r.reference: (r.purchased, r.allocated) for r in await rows(engine, query)}


async def tombstones(engine: AsyncEngine, sku: str) -> list[str]:
    """The orders whose line of ``sku`` the read model saw deallocated, and not reallocated."""
    v = tables.allocations_view.c
    query = select(v.orderid).where(v.sku == sku, v.batchref.is_(None))
    return [r.orderid for r in await rows(engine, query)]


async def product_versions(engine: AsyncEngine, sku: str) -> list[int]:
    p = tables.products.c
    return [
        r.version_number for r in await rows(engine, select(p.version_number).where(p.sku == sku))
    ]


async def order_line_count(engine: AsyncEngine, sku: str) -> int:
    query = select(func.count()).where(tables.order_lines.c.sku == sku)
    [(count,)] = await rows(engine, query)
    return int(count)


async def test_concurrent_allocations_never_oversell(
    bus: MessageBus,
    engine: AsyncEngine,
    container: Container,
    notifications: FakeNotifications,
    publisher: FakePublisher,
) -> None:
    sku, early, late = random_ref("sku"), random_ref("early"), random_ref("late")
    await bus.handle(commands.CreateBatch(early, sku, 10, date(2011, 1, 1)))
    await bus.handle(commands.CreateBatch(late, sku, 15, date(2011, 1, 2)))
    orders = [random_ref("order") for _ in range(40)]

    await handle_all(bus, [commands.Allocate(o, sku, 1) for o in orders])

    assert await batches_of(engine, sku) == {early: (10, 10), late: (15, 15)}
    held = await allocated_lines(engine, sku)
    assert sorted(len(lines) for lines in held.values()) == [10, 15]
    assert await order_line_count(engine, sku) == 25
    viewed = await viewed_allocations(engine, sku)
    assert len(viewed) == 25
    assert viewed == {o: ref for ref, lines in held.items() for o, _ in lines}
    assert await viewed_batches(engine, sku) == {early: (10, 10), late: (15, 15)}
    # What reaches outside the database waits for delivery, and then happens once.
    assert published_orders(publisher, sku) == []
    await deliver_everything(container)
    assert notifications.sent.count(sku) == 1  # 15 lines refused in one stock-out: one notice
    assert published_orders(publisher, sku) == sorted(viewed)


async def test_concurrent_batches_of_a_new_sku_all_land_on_one_product(
    bus: MessageBus, engine: AsyncEngine
) -> None:
    sku = random_ref("sku")
    refs = [random_ref("batch") for _ in range(8)]

    await handle_all(bus, [commands.CreateBatch(ref, sku, 10) for ref in refs])

    assert await product_versions(engine, sku) == [8]
    assert await batches_of(engine, sku) == dict.fromkeys(refs, (10, 0))
    assert await viewed_batches(engine, sku) == dict.fromkeys(refs, (10, 0))


async def test_concurrent_identical_batches_make_one(bus: MessageBus, engine: AsyncEngine) -> None:
    sku, ref = random_ref("sku"), random_ref("batch")

    await handle_all(bus, [commands.CreateBatch(ref, sku, 10)] * 8)

    assert await product_versions(engine, sku) == [1]
    assert await batches_of(engine, sku) == {ref: (10, 0)}
    assert await viewed_batches(engine, sku) == {ref: (10, 0)}


async def test_concurrent_identical_allocations_allocate_once(
    bus: MessageBus, engine: AsyncEngine
) -> None:
    sku, ref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    await bus.handle(commands.CreateBatch(ref, sku, 10))

    await handle_all(bus, [commands.Allocate(orderid, sku, 3)] * 8)

    assert await batches_of(engine, sku) == {ref: (10, 3)}
    assert await allocated_lines(engine, sku) == {ref: [(orderid, 3)]}
    assert await viewed_allocations(engine, sku) == {orderid: ref}


async def test_one_reference_raced_for_two_new_skus_goes_to_one(
    bus: MessageBus, engine: AsyncEngine
) -> None:
    ref, skus = random_ref("batch"), [random_ref("sku"), random_ref("sku")]

    outcomes = await asyncio.gather(
        *(bus.handle(commands.CreateBatch(ref, sku, 10)) for sku in skus), return_exceptions=True
    )

    [error] = [o for o in outcomes if o is not None]
    assert isinstance(error, model.DuplicateBatch)
    winner = skus[outcomes.index(None)]
    assert await batches_of(engine, winner) == {ref: (10, 0)}
    loser = skus[1 - skus.index(winner)]
    assert await product_versions(engine, loser) == []


async def test_one_order_raced_with_two_quantities_is_allocated_once(
    bus: MessageBus, engine: AsyncEngine
) -> None:
    sku, ref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    await bus.handle(commands.CreateBatch(ref, sku, 10))

    outcomes = await asyncio.gather(
        *(bus.handle(commands.Allocate(orderid, sku, qty)) for qty in (2, 5)),
        return_exceptions=True,
    )

    [error] = [o for o in outcomes if o is not None]
    assert isinstance(error, model.LineConflict)
    qty = (2, 5)[outcomes.index(None)]
    assert await batches_of(engine, sku) == {ref: (10, qty)}
    assert await allocated_lines(engine, sku) == {ref: [(orderid, qty)]}
    assert await viewed_allocations(engine, sku) == {orderid: ref}


async def test_allocations_racing_quantity_changes_keep_every_count_true(
    bus: MessageBus,
    engine: AsyncEngine,
    container: Container,
    notifications: FakeNotifications,
    publisher: FakePublisher,
) -> None:
    sku = random_ref("sku")
    refs = [random_ref(f"batch{i}") for i in range(3)]
    for day, ref in enumerate(refs, start=1):
        await bus.handle(commands.CreateBatch(ref, sku, 20, date(2011, 1, day)))
    orders = {random_ref("order"): 1 + i % 3 for i in range(60)}
    allocations = [commands.Allocate(orderid, sku, qty) for orderid, qty in orders.items()]
    # 39 units, more than the 36 at most left once every batch is lowered:
    # some of these lines must be taken away while the rest race in.
    await handle_all(bus, allocations[:20])
    assert len(await viewed_allocations(engine, sku)) == 20
    racing: list[commands.Command] = list(allocations[20:])
    for ref, lowered in zip(refs, [(12, 7), (9, 4), (15, 10)], strict=True):
        racing += [commands.ChangeBatchQuantity(ref, qty) for qty in lowered]
    random.Random(1234).shuffle(racing)

    await handle_all(bus, racing)

    batches = await batches_of(engine, sku)
    held = await allocated_lines(engine, sku)
    for ref, (purchased, allocated) in batches.items():
        assert allocated == sum(qty for _, qty in held.get(ref, [])), ref
        assert allocated <= purchased, ref
    held_orders = [orderid for lines in held.values() for orderid, _ in lines]
    assert len(held_orders) == len(set(held_orders))
    assert await order_line_count(engine, sku) == len(held_orders)
    assert all(orders[o] == qty for lines in held.values() for o, qty in lines)

    written = {o: ref for ref, lines in held.items() for o, _ in lines}
    assert await viewed_allocations(engine, sku) == written
    assert await viewed_batches(engine, sku) == batches
    assert await tombstones(engine, sku)
    # Every order left without stock reads as refused; each stock-out (the
    # shuffle may raise a batch again, ending one) was told once.
    async with engine.connect() as conn:
        r = tables.order_lines_view.c
        query = select(r.orderid).where(r.sku == sku, r.state == "out_of_stock")
        refused = set((await conn.execute(query)).scalars())
    assert set(orders) - set(written) <= refused
    stock_outs = await outbox_rows(engine, sku, "OutOfStock")
    assert 1 <= len(stock_outs) <= 4  # the first, and one after each of 3 raises at most
    await deliver_everything(container)
    assert notifications.sent.count(sku) == len(stock_outs)
    # Every order placed in the end was published at least once (a moved
    # line once for each batch it went to).
    assert set(written) <= set(published_orders(publisher, sku))
