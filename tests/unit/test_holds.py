"""Holds on the fakes: what the bus and the domain do with each command, on a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import date, datetime

import pytest

from app import clock
from app.domain import commands, model
from app.service_layer import holds
from app.service_layer.handlers import InvalidSku
from tests.support.buses import Service, bootstrap_test_bus
from tests.support.fakes import FakeNotifications, FakePublisher, FakeStore, FakeUnitOfWork
from tests.support.polling import eventually
from tests.support.refs import random_ref


@pytest.fixture
def fake_clock() -> Iterator[clock.FakeClock]:
    fake = clock.FakeClock(datetime(2031, 6, 1, 12, 0))
    previous = clock.use(fake)
    yield fake
    clock.use(previous)


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
async def service(store: FakeStore, publisher: FakePublisher) -> Service:
    service = bootstrap_test_bus(store, FakeNotifications(), publisher=publisher)
    await service.handle(commands.CreateBatch("now", "CHAIR", 5))
    await service.handle(commands.CreateBatch("later", "CHAIR", 5, date(2031, 7, 1)))
    await service.handle(commands.CreateBatch("lamp", "LAMP", 2))
    return service


def units(store: FakeStore, ref: str) -> tuple[int, int, int]:
    batch = next(b for p in store.products.values() for b in p.batches if b.reference == ref)
    return batch.purchased_quantity, batch.allocated_quantity, batch.held_quantity


async def test_a_hold_takes_warehouse_stock_first_and_allocations_see_what_is_left(
    service: Service, store: FakeStore, fake_clock: clock.FakeClock
) -> None:
    await service.handle(commands.PlaceHold("h", (("CHAIR", 4), ("LAMP", 1)), 60))

    hold = store.holds["h"]
    lines = [(ln.sku, ln.qty, ln.batchref) for ln in hold.lines]
    assert lines == [("CHAIR", 4, "now"), ("LAMP", 1, "lamp")]
    assert hold.expires_at == datetime(2031, 6, 1, 12, 1)
    assert units(store, "now") == (5, 0, 4)
    await service.handle(commands.Allocate("order-1", "CHAIR", 2))  # 1 left here: the shipment
    await service.handle(commands.Allocate("order-2", "CHAIR", 1))
    assert store.read_model.allocations_of("order-1") == [{"sku": "CHAIR", "batchref": "later"}]
    assert store.read_model.allocations_of("order-2") == [{"sku": "CHAIR", "batchref": "now"}]
    assert units(store, "now") == (5, 1, 4)


async def test_a_short_line_changes_nothing_anywhere(
    service: Service, store: FakeStore, fake_clock: clock.FakeClock
) -> None:
    with pytest.raises(holds.HoldShort) as refused:
        await service.handle(commands.PlaceHold("h", (("CHAIR", 3), ("LAMP", 3)), 60))

    assert refused.value.members == {"short": ["LAMP"]}
    assert "h" not in store.holds
    assert [units(store, ref)[2] for ref in ("now", "later", "lamp")] == [0, 0, 0]
    with pytest.raises(InvalidSku):
        await service.handle(commands.PlaceHold("h", (("CHAIR", 1), ("NOPE", 1)), 60))
    assert units(store, "now")[2] == 0


async def test_confirm_moves_held_units_to_the_order_in_the_same_batch(
    service: Service, store: FakeStore, fake_clock: clock.FakeClock
) -> None:
    await service.handle(commands.PlaceHold("h", (("CHAIR", 4),), 60))
    await service.handle(commands.ConfirmHold("h", "order-1"))

    assert units(store, "now") == (5, 4, 0)
    assert store.holds["h"].state == "confirmed"
    assert store.read_model.allocations_of("order-1") == [{"sku": "CHAIR", "batchref": "now"}]
    await service.handle(commands.ConfirmHold("h", "order-1"))  # again: nothing changes
    assert units(store, "now") == (5, 4, 0)
    with pytest.raises(model.HoldEnded):
        await service.handle(commands.ConfirmHold("h", "order-2"))


async def test_a_hold_past_its_time_is_expired_by_the_loop_and_cannot_be_confirmed(
    service: Service, store: FakeStore, publisher: FakePublisher, fake_clock: clock.FakeClock
) -> None:
    await service.handle(commands.PlaceHold("h", (("CHAIR", 5),), 10))
    fake_clock.advance(10)
    stop = asyncio.Event()
    loop = asyncio.create_task(
        holds.expire_due(lambda: FakeUnitOfWork(store), service.handle, stop, interval=0.001)
    )
    await eventually(lambda: store.holds["h"].state != "held", 5, "not expired")
    stop.set()
    await loop

    assert store.holds["h"].state == "expired"
    assert units(store, "now") == (5, 0, 0)
    assert [p["state"] for c, p in publisher.published if c == "hold_changed"] == [
        "held",
        "expired",
    ]
    with pytest.raises(model.HoldEnded):
        await service.handle(commands.ConfirmHold("h", "order-1"))


async def test_extend_and_confirm_on_a_hold_past_its_time_expire_it_there_and_then(
    service: Service, store: FakeStore, fake_clock: clock.FakeClock
) -> None:
    await service.handle(commands.PlaceHold("h", (("CHAIR", 5),), 10))
    fake_clock.advance(11)

    with pytest.raises(model.HoldEnded, match="expired"):
        await service.handle(commands.ExtendHold("h", 60))

    assert store.holds["h"].state == "expired"
    assert units(store, "now") == (5, 0, 0)


async def test_a_batch_that_shrinks_drops_the_latest_hold_before_any_order_line(
    service: Service, store: FakeStore, publisher: FakePublisher, fake_clock: clock.FakeClock
) -> None:
    await service.handle(commands.Allocate("order-1", "CHAIR", 2))
    await service.handle(commands.PlaceHold("first", (("CHAIR", 1),), 60))
    await service.handle(commands.PlaceHold("second", (("CHAIR", 2),), 60))

    await service.handle(commands.ChangeBatch("now", 3, reason="damaged"))

    assert units(store, "now") == (3, 2, 1)
    assert [ln.batchref for ln in store.holds["second"].lines] == [None]
    assert [ln.batchref for ln in store.holds["first"].lines] == ["now"]
    # Said as any change of the hold is: hold_changed, its line now of no batch.
    said = [p for c, p in publisher.published if c == "hold_changed" and p["holdid"] == "second"]
    assert [(p["state"], p["lines"][0]["batchref"], p["version"]) for p in said] == [
        ("held", "now", 1),
        ("held", None, 2),
    ]
    assert said[0]["expires_at"] == "2031-06-01T12:01:00Z"  # UTC, and says so
    # Confirmed, the lost line is placed as any new line: in the shipment.
    await service.handle(commands.ConfirmHold("second", "order-2"))
    assert store.read_model.allocations_of("order-2") == [{"sku": "CHAIR", "batchref": "later"}]


async def test_release_is_repeatable_and_an_unknown_hold_is_refused(
    service: Service, store: FakeStore, fake_clock: clock.FakeClock
) -> None:
    await service.handle(commands.PlaceHold("h", (("LAMP", 2),), 60))
    await service.handle(commands.ReleaseHold("h"))
    await service.handle(commands.ReleaseHold("h"))

    assert units(store, "lamp") == (2, 0, 0)
    assert store.holds["h"].state == "released"
    with pytest.raises(holds.UnknownHold):
        await service.handle(commands.ReleaseHold(random_ref("h")))
    with pytest.raises(holds.HoldMismatch):
        await service.handle(commands.PlaceHold("h", (("LAMP", 1),), 60))
