"""Delivery through the outbox, on fakes: what the bus leaves there, and what redelivery finishes.

The bus and its handlers are wired as app.container wires them; only the
adapters are fakes.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Self, TypeVar

import pytest
from dependency_injector import providers

from app.adapters.outbox import utcnow
from app.container import Container
from app.domain import commands, events, model
from app.faults import Faults, InjectedFault
from app.service_layer import handlers
from app.service_layer.messagebus import Handler, MessageBus, RetryPolicy
from app.service_layer.relay import Relay, RelaySettings
from app.service_layer.unit_of_work import AbstractUnitOfWork
from tests.conftest import random_ref
from tests.fakes import (
    FakeNotifications,
    FakeOutbox,
    FakePublisher,
    FakeStore,
    FakeUnitOfWork,
    OutboxRow,
)

FAST_RETRY = RetryPolicy(attempts=3, backoff_base=0.0001, backoff_max=0.001)
# Longer than any lease or backoff in these tests.
LATER = timedelta(hours=1)
# Allocated's handlers: the read models (recorded by their own commit), and
# the publish (with nothing to write, recorded only if the event fails).
READ_MODELS = "add_allocation_to_read_model"
PUBLISH = "publish_allocated_event"

E = TypeVar("E", bound=events.Event)


class RollingBackUnitOfWork(FakeUnitOfWork):
    """Undoes what it wrote unless it committed, as a database transaction would.

    What it writes: the products, and the outbox's ledger of handled events.
    """

    def __init__(self, store: FakeStore, faults: Faults) -> None:
        super().__init__(store, faults)
        self._products: dict[str, model.Product] = {}
        self._handled: set[tuple[str, str]] = set()

    async def __aenter__(self) -> Self:
        self._products = copy.deepcopy(self.store.products)
        self._handled = set(self.store.outbox.handled)
        return await super().__aenter__()

    async def rollback(self) -> None:
        if not self.committed:
            self.store.products.clear()
            self.store.products.update(self._products)
            self.store.outbox.handled.intersection_update(self._handled)


@dataclass
class Service:
    """The container's bus and relay, on fakes that the test can look into."""

    container: Container
    store: FakeStore
    faults: Faults
    publisher: FakePublisher
    notifications: FakeNotifications

    @property
    def bus(self) -> MessageBus:
        bus: MessageBus = self.container.bus()
        return bus

    @property
    def relay(self) -> Relay:
        relay: Relay = self.container.relay()
        return relay

    @property
    def outbox(self) -> FakeOutbox:
        return self.store.outbox

    def also_handle(self, event_type: type[events.Event], handler: Handler) -> None:
        wired = dict(self.container.event_handlers())
        wired[event_type] = [*wired[event_type], handler]
        self.container.event_handlers.override(providers.Object(wired))


@pytest.fixture
def service() -> Service:
    store, faults, notifications = FakeStore(), Faults(), FakeNotifications()
    publisher = FakePublisher(faults)
    container = Container()
    container.faults.override(providers.Object(faults))
    container.uow.override(providers.Callable(lambda: RollingBackUnitOfWork(store, faults)))
    container.publisher.override(providers.Object(publisher))
    container.notifications.override(providers.Object(notifications))
    container.retry.override(providers.Object(FAST_RETRY))
    container.relay_settings.override(
        providers.Object(RelaySettings(lease=timedelta(0), poll_interval=0.01))
    )
    return Service(container, store, faults, publisher, notifications)


def time_passes(outbox: FakeOutbox, delta: timedelta) -> None:
    """The outbox as it will be ``delta`` from now: every lease and backoff that much nearer."""
    for row in outbox.rows.values():
        row.available_at -= delta


def only_row(outbox: FakeOutbox, event_type: type[events.Event]) -> OutboxRow:
    [row] = [r for r in outbox.rows.values() if type(r.event) is event_type]
    return row


def only(outbox: FakeOutbox, event_type: type[E]) -> E:
    event = only_row(outbox, event_type).event
    assert isinstance(event, event_type)
    return event


def handled(outbox: FakeOutbox, event: events.Event) -> set[str]:
    return {handler for event_id, handler in outbox.handled if event_id == event.id}


def line_allocated(
    orderid: str, sku: str, qty: int, batchref: str, event_id: str, request_id: str | None = None
) -> tuple[str, dict[str, Any]]:
    return (
        "line_allocated",
        {
            "orderid": orderid,
            "sku": sku,
            "qty": qty,
            "batchref": batchref,
            "event_id": event_id,
            "request_id": request_id,
        },
    )


async def wait_until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        # The relay runs as another task on this loop: let it, until it has done the work.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0)


async def stocked(service: Service, qty: int = 100) -> tuple[str, str]:
    sku, ref = random_ref("sku"), random_ref("batch")
    await service.bus.handle(commands.CreateBatch(ref, sku, qty, None))
    return sku, ref


class TestHandle:
    async def test_the_commands_events_are_in_the_outbox_and_completed(
        self, service: Service
    ) -> None:
        sku, ref = await stocked(service)
        orderid = random_ref("order")

        await service.bus.handle(commands.Allocate(orderid, sku, 10))

        rows = list(service.outbox.rows.values())
        assert [r.event for r in rows] == [
            events.BatchCreated(sku=sku, ref=ref, qty=100, eta=None, version=1),
            events.Allocated(orderid=orderid, sku=sku, qty=10, batchref=ref, version=2),
        ]
        assert [(r.completed, r.attempts, r.last_error) for r in rows] == [(True, 0, None)] * 2
        assert service.outbox.pending() == []
        allocated = only(service.outbox, events.Allocated)
        assert handled(service.outbox, allocated) == {READ_MODELS}

    async def test_publishes_the_allocation_with_the_events_id(self, service: Service) -> None:
        sku, ref = await stocked(service)
        orderid = random_ref("order")

        await service.bus.handle(commands.Allocate(orderid, sku, 10))

        allocated = only(service.outbox, events.Allocated)
        assert service.publisher.published == [line_allocated(orderid, sku, 10, ref, allocated.id)]

    async def test_an_event_without_handlers_is_completed(self, service: Service) -> None:
        sku, _ = await stocked(service, qty=5)

        await service.bus.handle(commands.Allocate(random_ref("order"), sku, 10))

        out_of_stock = only_row(service.outbox, events.OutOfStock)
        assert out_of_stock.completed
        assert service.notifications.sent == [sku]

    async def test_a_failing_handler_leaves_its_event_pending_and_the_others_done(
        self, service: Service
    ) -> None:
        sku, ref = await stocked(service)
        orderid = random_ref("order")
        service.faults.arm("publish")
        before = utcnow()

        await service.bus.handle(commands.Allocate(orderid, sku, 10))

        row = only_row(service.outbox, events.Allocated)
        assert not row.completed
        assert row.attempts == 1
        assert row.last_error is not None
        assert row.last_error.startswith("publish_allocated_event: InjectedFault")
        # Due again after the first backoff, not at once.
        assert row.available_at >= before + FAST_RETRY.redelivery_delay(1)
        assert handled(service.outbox, row.event) == {READ_MODELS}
        assert service.store.read_model.allocations_of(orderid) == [{"sku": sku, "batchref": ref}]
        assert service.publisher.published == []

    async def test_a_handler_failing_to_commit_is_not_recorded_as_done(
        self, service: Service
    ) -> None:
        sku, _ = await stocked(service)
        service.faults.arm("commit:add_allocation_to_read_model")

        await service.bus.handle(commands.Allocate(random_ref("order"), sku, 10))

        row = only_row(service.outbox, events.Allocated)
        assert (row.completed, row.attempts) == (False, 1)
        assert row.last_error is not None
        assert "add_allocation_to_read_model: InjectedFault" in row.last_error
        # The publish succeeded: recorded with the failure, it will not run again.
        assert handled(service.outbox, row.event) == {PUBLISH}


class TestRedelivery:
    async def test_redeliver_runs_only_the_unfinished_handler(self, service: Service) -> None:
        sku, ref = await stocked(service)
        orderid = random_ref("order")
        service.faults.arm("publish")
        await service.bus.handle(commands.Allocate(orderid, sku, 10))
        row = only_row(service.outbox, events.Allocated)
        # Changed behind the bus's back: read model handlers that ran again would copy this.
        [batch] = service.store.products[sku].batches
        batch.purchased_quantity = 70
        batch.deallocate_one()

        done = await service.bus.redeliver(
            row.event, row.attempts, frozenset(handled(service.outbox, row.event))
        )

        assert done
        assert row.completed
        assert handled(service.outbox, row.event) == {READ_MODELS}
        assert service.publisher.published == [line_allocated(orderid, sku, 10, ref, row.event.id)]
        assert service.store.read_model.allocations_of(orderid) == [{"sku": sku, "batchref": ref}]
        assert service.store.read_model.batches[ref]["purchased"] == 100

    async def test_redeliver_reports_a_handler_that_fails_again(self, service: Service) -> None:
        sku, _ = await stocked(service)
        service.faults.arm("publish", times=2)
        await service.bus.handle(commands.Allocate(random_ref("order"), sku, 10))
        row = only_row(service.outbox, events.Allocated)

        done = await service.bus.redeliver(
            row.event, row.attempts, frozenset(handled(service.outbox, row.event))
        )

        assert not done
        assert (row.completed, row.attempts) == (False, 2)
        assert service.publisher.published == []

    async def test_the_relay_delivers_a_failed_event_once_its_backoff_is_over(
        self, service: Service
    ) -> None:
        sku, ref = await stocked(service)
        orderid = random_ref("order")
        service.faults.arm("publish")
        await service.bus.handle(commands.Allocate(orderid, sku, 10))
        row = only_row(service.outbox, events.Allocated)
        relay = service.relay

        assert await relay.run_once() == 0
        time_passes(service.outbox, LATER)
        assert await relay.run_once() == 1

        assert row.completed
        assert relay.failures == 0
        assert service.publisher.published == [line_allocated(orderid, sku, 10, ref, row.event.id)]
        assert await relay.run_once() == 0

    async def test_each_failed_delivery_backs_off_further(self, service: Service) -> None:
        sku, _ = await stocked(service)
        service.faults.arm("publish", times=3)
        await service.bus.handle(commands.Allocate(random_ref("order"), sku, 10))
        row = only_row(service.outbox, events.Allocated)
        relay = service.relay

        for attempts in (2, 3):
            time_passes(service.outbox, LATER)
            before = utcnow()
            assert await relay.run_once() == 1
            after = utcnow()
            delay = FAST_RETRY.redelivery_delay(attempts)
            assert row.attempts == attempts
            assert before + delay <= row.available_at <= after + delay
        assert relay.failures == 2

        time_passes(service.outbox, LATER)
        assert await relay.run_once() == 1
        assert row.completed
        assert len(service.publisher.published) == 1

    async def test_a_crash_after_the_commit_loses_no_event(self, service: Service) -> None:
        sku, ref = await stocked(service)
        orderid = random_ref("order")
        service.faults.arm("after_commit")

        with pytest.raises(InjectedFault):
            await service.bus.handle(commands.Allocate(orderid, sku, 10))

        # The allocation is committed, its event stored but not yet delivered.
        assert service.store.products[sku].batches[0].allocated_quantity == 10
        allocated = only(service.outbox, events.Allocated)
        assert service.outbox.pending() == [allocated]
        assert handled(service.outbox, allocated) == set()
        assert service.store.read_model.allocations_of(orderid) == []
        # Nobody else delivers it while the lease of the crashed process lasts.
        assert await service.relay.run_once() == 0

        time_passes(service.outbox, LATER)
        assert await service.relay.run_once() == 1

        assert service.outbox.pending() == []
        assert service.store.read_model.allocations_of(orderid) == [{"sku": sku, "batchref": ref}]
        assert service.store.read_model.batches[ref]["allocated"] == 10
        assert service.publisher.published == [line_allocated(orderid, sku, 10, ref, allocated.id)]

    async def test_a_redelivered_event_is_followed_by_the_events_its_handlers_raise(
        self, service: Service
    ) -> None:
        sku, in_stock = await stocked(service, qty=20)
        shipment, orderid = random_ref("ship"), random_ref("order")
        await service.bus.handle(commands.CreateBatch(shipment, sku, 20, utcnow().date()))
        await service.bus.handle(commands.Allocate(orderid, sku, 20))
        service.faults.arm("commit:reallocate")

        await service.bus.handle(commands.ChangeBatchQuantity(in_stock, 10))

        deallocated = only_row(service.outbox, events.Deallocated)
        assert not deallocated.completed
        assert service.store.read_model.allocations_of(orderid) == []

        time_passes(service.outbox, LATER)
        assert await service.relay.run_once() == 1

        assert deallocated.completed
        assert service.outbox.pending() == []
        assert service.store.read_model.allocations_of(orderid) == [
            {"sku": sku, "batchref": shipment}
        ]
        [_, moved] = [
            r.event for r in service.outbox.rows.values() if isinstance(r.event, events.Allocated)
        ]
        assert service.publisher.published[-1] == line_allocated(
            orderid, sku, 20, shipment, moved.id
        )

    async def test_a_running_relay_catches_the_read_model_up(self, service: Service) -> None:
        sku, ref = await stocked(service)
        orderid = random_ref("order")
        service.faults.arm("after_commit")
        with pytest.raises(InjectedFault):
            await service.bus.handle(commands.Allocate(orderid, sku, 10))
        time_passes(service.outbox, LATER)
        stop = asyncio.Event()

        running = asyncio.create_task(service.relay.run(stop))
        try:
            await wait_until(lambda: service.outbox.pending() == [])
        finally:
            stop.set()
            await running

        assert service.store.read_model.allocations_of(orderid) == [{"sku": sku, "batchref": ref}]
        assert len(service.publisher.published) == 1


class TestDuplicates:
    async def test_a_handler_run_again_for_one_event_has_no_effect(self, service: Service) -> None:
        async def open_an_order(event: events.BatchCreated, uow: AbstractUnitOfWork) -> None:
            # Not idempotent of itself: every run opens another order.
            await handlers.allocate(commands.Allocate(random_ref("open"), event.sku, 1), uow)

        service.also_handle(events.BatchCreated, open_an_order)
        sku, _ = await stocked(service)
        created = only(service.outbox, events.BatchCreated)
        assert handled(service.outbox, created) == {"update_batch_read_model", "open_an_order"}

        # As a second delivery that does not know the first one finished.
        done = await service.bus.redeliver(created, 0, frozenset())

        assert done
        assert only_row(service.outbox, events.BatchCreated).completed
        # The second run's order was rolled back, and its event never stored nor sent.
        assert service.store.products[sku].batches[0].allocated_quantity == 1
        assert [type(r.event) for r in service.outbox.rows.values()] == [
            events.BatchCreated,
            events.Allocated,
        ]
        assert len(service.publisher.published) == 1

    async def test_a_repeated_publish_carries_the_same_event_id(self, service: Service) -> None:
        """Publishing is at least once: consumers drop what they have seen by its event_id."""
        sku, _ = await stocked(service)
        await service.bus.handle(commands.Allocate(random_ref("order"), sku, 10))
        allocated = only(service.outbox, events.Allocated)

        await service.bus.redeliver(allocated, 0, frozenset())

        first, again = service.publisher.published
        assert first == again
        assert first[1]["event_id"] == allocated.id


def test_redelivery_backs_off_exponentially_up_to_a_maximum() -> None:
    policy = RetryPolicy(redelivery_base=1.0, redelivery_max=10.0)

    delays = [policy.redelivery_delay(attempts) for attempts in range(1, 7)]

    assert delays == [timedelta(seconds=s) for s in (1, 2, 4, 8, 10, 10)]


class SlowPublisher(FakePublisher):
    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        await asyncio.sleep(0.03)
        await super().publish(channel, payload)


async def test_a_relay_hands_back_what_it_cannot_deliver_within_half_its_lease(
    service: Service,
) -> None:
    slow = SlowPublisher()
    service.container.publisher.override(providers.Object(slow))
    service.container.relay_settings.override(
        providers.Object(RelaySettings(lease=timedelta(seconds=0.05)))
    )
    sku = random_ref("sku")
    await service.bus.handle(commands.CreateBatch(random_ref("batch"), sku, 100))
    service.faults.arm("after_commit", times=4)
    for _ in range(4):
        with pytest.raises(InjectedFault):
            await service.bus.handle(commands.Allocate(random_ref("order"), sku, 1))
    time_passes(service.outbox, LATER)

    delivered = await service.relay.run_once()

    assert 0 < delivered < 4
    now = utcnow()
    handed_back = [r for r in service.outbox.rows.values() if not r.completed]
    assert len(handed_back) == 4 - delivered
    assert all(r.available_at <= now for r in handed_back)
