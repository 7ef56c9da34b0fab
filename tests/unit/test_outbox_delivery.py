"""Delivery through the outbox, on fakes: what a command leaves there, and what delivery finishes.

The bus, the delivery and the handlers are wired as app.container wires
them; only the adapters are fakes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from dependency_injector import providers

from app import correlation, metrics
from app.backoff import Backoff
from app.clock import utcnow
from app.container import Container
from app.domain import commands, events
from app.service_layer.delivery import Delivery
from app.service_layer.handlers import INLINE_HANDLERS
from app.service_layer.messagebus import MessageBus, RetryPolicy
from app.service_layer.relay import Relay, RelaySettings
from tests.support.fakes import FailingPublisher, FakeNotifications, FakeStore, FakeUnitOfWork
from tests.support.polling import eventually
from tests.support.refs import random_ref

PUBLISH = "publish_allocated_event"


@dataclass
class Service:
    container: Container
    store: FakeStore
    publisher: FailingPublisher
    notifications: FakeNotifications

    @property
    def bus(self) -> MessageBus:
        bus: MessageBus = self.container.bus()
        return bus

    @property
    def delivery(self) -> Delivery:
        delivery: Delivery = self.container.delivery()
        return delivery

    def published(self) -> list[str]:
        return [payload["event_id"] for _, payload in self.publisher.published]

    def make_due(self) -> None:
        """Wind the clock on: every event's backoff is over."""
        for row in self.store.outbox.rows.values():
            row.available_at = utcnow()


def make_service(extra: dict[type[events.Event], dict[str, Any]] | None = None) -> Service:
    store, publisher, notifications = FakeStore(), FailingPublisher(times=0), FakeNotifications()
    container = Container()
    container.publisher.override(providers.Object(publisher))
    container.notifications.override(providers.Object(notifications))
    container.retry.override(
        providers.Object(RetryPolicy(attempts=3, backoff=Backoff(0.0001, 0.0001)))
    )
    if extra is not None:
        real = container.after_commit_handlers()
        merged = {t: {**real.get(t, {}), **extra.get(t, {})} for t in {*real, *extra}}
        container.after_commit_handlers.override(providers.Object(merged))
    container.uow.override(
        providers.Factory(
            FakeUnitOfWork,
            store,
            inline=INLINE_HANDLERS,
            after_commit=container.after_commit_handlers,
        )
    )
    return Service(container, store, publisher, notifications)


async def allocated(service: Service) -> events.Allocated:
    sku, orderid = random_ref("sku"), random_ref("order")
    await service.bus.handle(commands.CreateBatch(random_ref("batch"), sku, 10, None))
    await service.bus.handle(commands.Allocate(orderid, sku, 1))
    [event] = [e for e in service.store.outbox.pending() if isinstance(e, events.Allocated)]
    return event


async def test_a_command_stores_only_what_must_happen_after_its_commit() -> None:
    service = make_service()
    sku, ref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")

    await service.bus.handle(commands.CreateBatch(ref, sku, 1, None))
    await service.bus.handle(commands.Allocate(orderid, sku, 1))
    await service.bus.handle(commands.Allocate(random_ref("order"), sku, 1))

    # The read models changed in the commands' own transactions...
    assert service.store.read_model.allocations_of(orderid) == [{"sku": sku, "batchref": ref}]
    # ...and only the publish and the notice wait, for delivery.
    pending = [type(e) for e in service.store.outbox.pending()]
    assert pending == [events.Allocated, events.OutOfStock]
    assert service.published() == []


async def test_delivery_publishes_with_the_events_id_and_settles_it() -> None:
    service = make_service()
    event = await allocated(service)

    assert await service.delivery.deliver_due() == 1

    assert service.published() == [event.id]
    assert service.store.outbox.pending() == []
    assert await service.delivery.deliver_due() == 0


async def test_a_failing_handler_leaves_its_event_due_later_and_the_others_recorded() -> None:
    calls: list[str] = []

    async def audit(event: events.Allocated) -> None:
        calls.append(event.id)

    service = make_service({events.Allocated: {"audit": audit}})
    event = await allocated(service)
    service.publisher.times = 1

    await service.delivery.deliver_due()

    row = service.store.outbox.rows[event.id]
    assert (row.completed, row.attempts) == (False, 1)
    assert PUBLISH in (row.last_error or "")
    assert row.available_at > utcnow()  # backed off
    assert service.store.outbox.handled == {(event.id, "audit")}

    service.make_due()
    await service.delivery.deliver_due()

    # Delivered again, to the handler that had not finished only.
    assert service.published() == [event.id]
    assert calls == [event.id]
    assert service.store.outbox.rows[event.id].completed


async def test_each_failed_delivery_backs_off_further() -> None:
    service = make_service()
    event = await allocated(service)
    service.publisher.times = 3
    waits = []
    for _ in range(3):
        service.make_due()
        before = utcnow()
        await service.delivery.deliver_due()
        waits.append(service.store.outbox.rows[event.id].available_at - before)

    assert waits[0] < waits[1] < waits[2]
    service.make_due()
    await service.delivery.deliver_due()
    assert service.published() == [event.id]


async def test_a_handler_that_fails_after_it_ran_repeats_recognisably() -> None:
    real = make_service()
    publish = real.container.after_commit_handlers()[events.Allocated][PUBLISH]
    failed = [False]

    async def publish_then_fail(e: events.Event) -> None:
        await publish(e)
        if not failed[0]:
            failed[0] = True
            raise ConnectionError("lost the answer")

    service = make_service({events.Allocated: {PUBLISH: publish_then_fail}})
    service.publisher = real.publisher
    event = await allocated(service)

    await service.delivery.deliver_due()
    service.make_due()
    await service.delivery.deliver_due()

    # Published twice, as the same message: consumers tell by the event id.
    assert service.published() == [event.id, event.id]
    assert service.store.outbox.pending() == []


class ProcessDied(Exception):
    pass


class CrashAfterCommitUnitOfWork(FakeUnitOfWork):
    """Commits, then the process dies before it can say so (while ``crashes`` has some left)."""

    def __init__(self, store: FakeStore, crashes: list[int], **kwargs: Any) -> None:
        super().__init__(store, **kwargs)
        self.crashes = crashes

    async def _commit(self) -> None:
        await super()._commit()
        if self.crashes[0] > 0:
            self.crashes[0] -= 1
            raise ProcessDied("killed right after the commit")


async def test_a_crash_after_the_commit_loses_no_event() -> None:
    service = make_service()
    sku, ref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    await service.bus.handle(commands.CreateBatch(ref, sku, 10, None))
    container = service.container
    container.uow.override(
        providers.Factory(
            CrashAfterCommitUnitOfWork,
            service.store,
            [1],
            inline=INLINE_HANDLERS,
            after_commit=container.after_commit_handlers,
        )
    )

    with pytest.raises(ProcessDied):
        await service.bus.handle(commands.Allocate(orderid, sku, 3))

    # Committed, with its read models; only the publish waits, in the outbox.
    assert service.store.products[sku].batches[0].allocated_quantity == 3
    assert service.store.read_model.allocations_of(orderid) == [{"sku": sku, "batchref": ref}]
    [event] = service.store.outbox.pending()
    assert isinstance(event, events.Allocated)
    assert service.published() == []

    # A relay started afterwards (a restart) delivers what the dead process owed.
    async with running(Relay(service.delivery, RelaySettings(poll_interval=60, gather=0))):
        await eventually(lambda: service.published() == [event.id], 5.0, "the event published")
        assert service.store.outbox.pending() == []


async def test_a_running_relay_delivers_a_failed_event_once_its_backoff_is_over() -> None:
    service = make_service()
    container = service.container
    container.delivery.override(
        providers.Singleton(
            Delivery,
            uow_factory=container.uow.provider,
            handlers=container.after_commit_handlers,
            backoff=Backoff(base=0.01, maximum=0.02),
        )
    )
    service.publisher.times = 2
    async with running(Relay(service.delivery, RelaySettings(poll_interval=0.005, gather=0))):
        event = await allocated(service)
        await eventually(lambda: service.published() == [event.id], 5.0, "the event published")

    row = service.store.outbox.rows[event.id]
    assert (row.completed, row.attempts) == (True, 2)
    assert PUBLISH in (row.last_error or "")


async def test_an_event_no_handler_waits_for_any_more_is_settled() -> None:
    service = make_service()
    # Stored while its type still had after-commit handlers.
    stale = events.BatchCreated(
        sku=random_ref("sku"), ref=random_ref("b"), qty=1, eta=None, version=1
    )
    await service.store.outbox.add([stale])

    assert await service.delivery.deliver_due() == 1

    assert service.store.outbox.pending() == []
    assert service.published() == []


async def test_delivery_restores_the_request_id_of_the_event() -> None:
    seen: list[str | None] = []

    async def note(event: events.Event) -> None:
        seen.append(correlation.request_id.get())

    service = make_service({events.Allocated: {"note": note}})
    token = correlation.request_id.set("req-1")
    try:
        await allocated(service)
    finally:
        correlation.request_id.reset(token)

    await service.delivery.deliver_due()

    assert seen == ["req-1"]


async def test_a_commit_wakes_the_relay_which_delivers_at_once() -> None:
    service = make_service()
    async with running(Relay(service.delivery, RelaySettings(poll_interval=60, gather=0))):
        event = await allocated(service)
        await eventually(lambda: service.published() == [event.id], 5.0, "the event published")


async def test_a_relay_whose_pruning_fails_counts_it_and_goes_on() -> None:
    service = make_service()

    async def broken(retention: timedelta) -> int:
        raise RuntimeError("prune failed")

    delivery = service.delivery
    delivery.prune = broken  # type: ignore[method-assign]
    before = metrics.PRUNE_FAILURES._value.get()
    async with running(Relay(delivery, RelaySettings(poll_interval=0.01, prune_every=0.01))):
        await eventually(
            lambda: metrics.PRUNE_FAILURES._value.get() >= before + 2, 5.0, "two failed prunes"
        )
        event = await allocated(service)
        await eventually(lambda: service.published() == [event.id], 5.0, "the event published")


@asynccontextmanager
async def running(relay: Relay) -> AsyncIterator[None]:
    """``relay`` at work in the background until the block ends."""
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


@pytest.fixture(autouse=True)
def _quiet_failures(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("CRITICAL", logger="app.service_layer.delivery")


async def test_a_products_events_go_out_in_version_order_even_after_a_failure() -> None:
    service = make_service()
    sku, other = random_ref("sku"), random_ref("sku")
    for product in (sku, other):
        await service.bus.handle(commands.CreateBatch(random_ref("batch"), product, 10, None))
    for product in (sku, sku, sku, other):
        await service.bus.handle(commands.Allocate(random_ref("order"), product, 1))
    pending = service.store.outbox.pending()
    first, second, third = [e.id for e in pending if getattr(e, "sku", None) == sku]
    [elsewhere] = [e.id for e in pending if getattr(e, "sku", None) == other]
    service.publisher.times = 1  # the pass's first publish, the product's first, fails

    await service.delivery.deliver_due()

    # The product's later events wait for its first; another product's go.
    assert service.published() == [elsewhere]
    service.make_due()
    await service.delivery.deliver_due()
    assert service.published() == [elsewhere, first, second, third]
    versions = [p["version"] for _, p in service.publisher.published if p["sku"] == sku]
    assert versions == sorted(versions)
