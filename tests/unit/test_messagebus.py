"""The bus's error policy, and the independence of concurrent handle() calls."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Self

import pytest

from app.domain import commands, events, model
from app.faults import Faults
from app.service_layer import handlers
from app.service_layer.messagebus import Handler, MessageBus, RetryPolicy, UnitOfWorkFactory
from app.service_layer.unit_of_work import AbstractUnitOfWork, ConcurrencyError
from tests.conftest import random_ref
from tests.fakes import FakeNotifications, FakeStore, FakeUnitOfWork

ATTEMPTS = 3


class ConflictingStore(FakeStore):
    def __init__(self, conflicts: int = 0) -> None:
        super().__init__()
        self.conflicts = conflicts  # how many commits still lose to a concurrent writer


class ConflictingUnitOfWork(FakeUnitOfWork):
    """Single use, and rolled back unless committed, like the real one.

    While its store has conflicts left, commit raises ConcurrencyError.
    """

    def __init__(self, store: ConflictingStore) -> None:
        super().__init__(store)
        self.conflicting = store
        self.entered = False
        self.snapshot: dict[str, model.Product] = {}

    async def __aenter__(self) -> Self:
        if self.entered:
            raise RuntimeError("a unit of work serves one attempt only")
        self.entered = True
        self.snapshot = copy.deepcopy(self.store.products)
        return await super().__aenter__()

    async def commit(self) -> None:
        if self.conflicting.conflicts > 0:
            self.conflicting.conflicts -= 1
            raise ConcurrencyError("could not serialize access due to concurrent update")
        await super().commit()

    async def rollback(self) -> None:
        if not self.committed:
            self.store.products.clear()
            self.store.products.update(self.snapshot)


class YieldingUnitOfWork(FakeUnitOfWork):
    """Gives way to other tasks on entering and committing, as a database round trip would."""

    async def __aenter__(self) -> Self:
        await asyncio.sleep(0)
        return await super().__aenter__()

    async def commit(self) -> None:
        await asyncio.sleep(0)
        await super().commit()


def make_bus(
    uow_factory: UnitOfWorkFactory,
    command_handlers: Mapping[type[commands.Command], Handler] | None = None,
    event_handlers: Mapping[type[events.Event], Sequence[Handler]] | None = None,
) -> MessageBus:
    if command_handlers is None:
        command_handlers = {
            commands.CreateBatch: handlers.add_batch,
            commands.Allocate: handlers.allocate,
        }
    if event_handlers is None:
        event_handlers = {events.Allocated: [handlers.add_allocation_to_read_model]}
    return MessageBus(
        uow_factory=uow_factory,
        command_handlers=command_handlers,
        event_handlers=event_handlers,
        retry=RetryPolicy(attempts=ATTEMPTS, backoff_base=0.0001, backoff_max=0.001),
        faults=Faults(),
    )


async def stock(store: FakeStore, sku: str, qty: int) -> str:
    ref = random_ref("batch")
    await make_bus(lambda: FakeUnitOfWork(store)).handle(commands.CreateBatch(ref, sku, qty))
    return ref


def available(store: FakeStore, sku: str) -> int:
    return sum(b.available_quantity for b in store.products[sku].batches)


class TestCommandErrors:
    async def test_concurrency_error_is_retried_on_a_fresh_unit_of_work(self) -> None:
        store = ConflictingStore()
        sku, orderid = random_ref("sku"), random_ref("order")
        ref = await stock(store, sku, 100)
        store.conflicts = ATTEMPTS - 1
        bus = make_bus(lambda: ConflictingUnitOfWork(store))

        await bus.handle(commands.Allocate(orderid, sku, 10))

        assert store.conflicts == 0
        assert available(store, sku) == 90
        assert store.read_model.allocations_of(orderid) == [{"sku": sku, "batchref": ref}]

    @pytest.mark.parametrize("conflicts", [ATTEMPTS, ATTEMPTS + 1])
    async def test_concurrency_error_reaches_the_caller_once_retries_are_spent(
        self, conflicts: int
    ) -> None:
        store = ConflictingStore()
        sku, orderid = random_ref("sku"), random_ref("order")
        await stock(store, sku, 100)
        store.conflicts = conflicts
        bus = make_bus(lambda: ConflictingUnitOfWork(store))

        with pytest.raises(ConcurrencyError):
            await bus.handle(commands.Allocate(orderid, sku, 10))

        assert store.conflicts == conflicts - ATTEMPTS
        assert available(store, sku) == 100
        assert store.read_model.allocations_of(orderid) == []

    async def test_other_errors_reach_the_caller_at_once(self) -> None:
        store = FakeStore()
        sku, orderid = random_ref("sku"), random_ref("order")
        await stock(store, sku, 100)
        runs: list[commands.Allocate] = []

        async def allocate_then_fail(cmd: commands.Allocate, uow: AbstractUnitOfWork) -> None:
            runs.append(cmd)
            await handlers.allocate(cmd, uow)
            raise ValueError("not a conflict")

        bus = make_bus(
            lambda: FakeUnitOfWork(store), command_handlers={commands.Allocate: allocate_then_fail}
        )

        with pytest.raises(ValueError, match="not a conflict"):
            await bus.handle(commands.Allocate(orderid, sku, 10))

        assert len(runs) == 1
        assert store.read_model.allocations_of(orderid) == []


async def explode(event: events.Event, uow: AbstractUnitOfWork, why: str = "boom") -> None:
    raise RuntimeError(why)


class TestEventErrors:
    @pytest.mark.parametrize("failing", [explode, partial(explode, why="bound")])
    async def test_a_failing_handler_is_logged_and_the_others_still_run(
        self, failing: Handler, caplog: pytest.LogCaptureFixture
    ) -> None:
        store = FakeStore()
        sku, orderid = random_ref("sku"), random_ref("order")
        ref = await stock(store, sku, 100)
        bus = make_bus(
            lambda: FakeUnitOfWork(store),
            event_handlers={events.Allocated: [failing, handlers.add_allocation_to_read_model]},
        )

        with caplog.at_level(logging.ERROR, logger="app.service_layer.messagebus"):
            await bus.handle(commands.Allocate(orderid, sku, 10))

        assert store.read_model.allocations_of(orderid) == [{"sku": sku, "batchref": ref}]
        # Kept for the relay to deliver again, to the handler that failed.
        assert [type(e) for e in store.outbox.pending()] == [events.Allocated]
        [record] = caplog.records
        assert "explode" in record.getMessage()
        assert orderid in record.getMessage()
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], RuntimeError)

    async def test_concurrency_error_in_an_event_handler_is_retried(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        store = ConflictingStore()
        sku, orderid = random_ref("sku"), random_ref("order")
        ref = await stock(store, sku, 100)

        async def contended_projection(event: events.Allocated, uow: AbstractUnitOfWork) -> None:
            if store.conflicts > 0:
                store.conflicts -= 1
                raise ConcurrencyError("projection row locked")
            await handlers.add_allocation_to_read_model(event, uow)

        store.conflicts = ATTEMPTS - 1
        bus = make_bus(
            lambda: FakeUnitOfWork(store), event_handlers={events.Allocated: [contended_projection]}
        )

        with caplog.at_level(logging.ERROR):
            await bus.handle(commands.Allocate(orderid, sku, 10))

        assert store.read_model.allocations_of(orderid) == [{"sku": sku, "batchref": ref}]
        assert caplog.records == []
        assert store.outbox.pending() == []


class TestEventChains:
    async def test_events_raised_by_event_handlers_are_handled_too(self) -> None:
        store, notifications = FakeStore(), FakeNotifications()
        sku, ref = random_ref("sku"), random_ref("batch")

        async def open_order(event: events.BatchCreated, uow: AbstractUnitOfWork) -> None:
            await handlers.allocate(commands.Allocate(f"open-{event.ref}", event.sku, 30), uow)

        async def follow_up(event: events.Allocated, uow: AbstractUnitOfWork) -> None:
            await handlers.allocate(commands.Allocate(f"more-{event.orderid}", event.sku, 30), uow)

        bus = make_bus(
            lambda: FakeUnitOfWork(store),
            event_handlers={
                events.BatchCreated: [open_order],
                events.Allocated: [handlers.add_allocation_to_read_model, follow_up],
                events.OutOfStock: [
                    partial(handlers.send_out_of_stock_notification, notifications=notifications)
                ],
            },
        )

        await bus.handle(commands.CreateBatch(ref, sku, 50))

        # BatchCreated -> Allocated -> (read model; follow-up order) -> OutOfStock -> notification
        assert store.read_model.allocations_of(f"open-{ref}") == [{"sku": sku, "batchref": ref}]
        assert store.read_model.allocations_of(f"more-open-{ref}") == []
        assert notifications.sent == [sku]

    async def test_concurrent_calls_each_handle_their_own_events(self) -> None:
        store, notifications = FakeStore(), FakeNotifications()
        in_stock = {random_ref("sku"): random_ref("order") for _ in range(5)}
        sold_out = {random_ref("sku"): random_ref("order") for _ in range(5)}
        refs = {sku: await stock(store, sku, 10) for sku in in_stock | sold_out}
        bus = make_bus(
            lambda: YieldingUnitOfWork(store),
            event_handlers={
                events.Allocated: [handlers.add_allocation_to_read_model],
                events.OutOfStock: [
                    partial(handlers.send_out_of_stock_notification, notifications=notifications)
                ],
            },
        )

        async def allocate(delay: int, sku: str, orderid: str, qty: int) -> None:
            for _ in range(delay):  # start while earlier calls are mid-way through their events
                await asyncio.sleep(0)
            await bus.handle(commands.Allocate(orderid, sku, qty))
            # handle() returns only once its own events are dealt with
            if qty <= 10:
                assert store.read_model.allocations_of(orderid) == [
                    {"sku": sku, "batchref": refs[sku]}
                ]
            else:
                assert sku in notifications.sent

        calls = [
            call
            for fits, too_many in zip(in_stock.items(), sold_out.items(), strict=True)
            for call in [(*fits, 10), (*too_many, 11)]
        ]
        await asyncio.gather(*(allocate(i, *call) for i, call in enumerate(calls)))

        assert sorted(notifications.sent) == sorted(sold_out)
        for orderid in sold_out.values():
            assert store.read_model.allocations_of(orderid) == []
