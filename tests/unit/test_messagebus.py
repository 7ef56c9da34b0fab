"""The bus's error policy, what one commit does, and the independence of concurrent calls."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from typing import Self

import pytest

from app.adapters.database_errors import ConcurrencyError
from app.backoff import Backoff
from app.domain import commands, events, model
from app.service_layer import handlers
from app.service_layer.delivery import Delivery, UnitOfWorkFactory
from app.service_layer.messagebus import CommandHandler, MessageBus, RetryPolicy
from app.service_layer.unit_of_work import AbstractUnitOfWork, InlineHandlers
from tests.support.fakes import FakeStore, FakeUnitOfWork
from tests.support.refs import random_ref

ATTEMPTS = 3
INLINE = handlers.INLINE_HANDLERS
AFTER_COMMIT = frozenset({events.Allocated, events.OutOfStock})


class ConflictingStore(FakeStore):
    def __init__(self, conflicts: int = 0) -> None:
        super().__init__()
        self.conflicts = conflicts  # how many commits still lose to a concurrent writer


class ConflictingUnitOfWork(FakeUnitOfWork):
    """Single use, and rolled back unless committed, like the real one.

    While its store has conflicts left, commit raises ConcurrencyError.
    """

    def __init__(self, store: ConflictingStore, inline: InlineHandlers | None = None) -> None:
        super().__init__(store, inline=inline or INLINE, after_commit=AFTER_COMMIT)
        self.conflicting = store
        self.entered = False
        self.done = False
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
        self.done = True

    async def rollback(self) -> None:
        if not self.done:
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
    command_handlers: Mapping[type[commands.Command], CommandHandler] | None = None,
) -> MessageBus:
    if command_handlers is None:
        command_handlers = {
            commands.CreateBatch: handlers.add_batch,
            commands.Allocate: handlers.allocate,
        }
    return MessageBus(
        uow_factory=uow_factory,
        command_handlers=command_handlers,
        retry=RetryPolicy(attempts=ATTEMPTS, backoff=Backoff(0.0001, 0.001, jitter=True)),
        delivery=Delivery(uow_factory, handlers={}),
    )


def fake_uow(store: FakeStore, inline: InlineHandlers | None = None) -> FakeUnitOfWork:
    return FakeUnitOfWork(
        store, inline=INLINE if inline is None else inline, after_commit=AFTER_COMMIT
    )


async def stock(store: FakeStore, sku: str, qty: int) -> str:
    ref = random_ref("batch")
    await make_bus(lambda: fake_uow(store)).handle(commands.CreateBatch(ref, sku, qty))
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
            lambda: fake_uow(store), command_handlers={commands.Allocate: allocate_then_fail}
        )

        with pytest.raises(ValueError, match="not a conflict"):
            await bus.handle(commands.Allocate(orderid, sku, 10))

        # Not run again; what it committed before failing stands, projected with it.
        assert len(runs) == 1
        assert available(store, sku) == 90
        assert len(store.read_model.allocations_of(orderid)) == 1


async def explode(event: events.Event, uow: AbstractUnitOfWork) -> None:
    raise RuntimeError("boom")


class TestInlineHandlers:
    async def test_a_failing_inline_handler_fails_the_command_and_commits_nothing(self) -> None:
        store = FakeStore()
        sku, orderid = random_ref("sku"), random_ref("order")
        await stock(store, sku, 100)
        inline = {**INLINE, events.Allocated: {"explode": explode}}
        commits = store.commits

        with pytest.raises(RuntimeError, match="boom"):
            await make_bus(lambda: fake_uow(store, inline)).handle(
                commands.Allocate(orderid, sku, 10)
            )

        assert store.commits == commits
        assert store.outbox.pending() == []

    async def test_a_collision_in_an_inline_handler_runs_the_command_again(self) -> None:
        store = ConflictingStore()
        sku, orderid = random_ref("sku"), random_ref("order")
        ref = await stock(store, sku, 100)
        collisions = [ATTEMPTS - 1]

        async def contended_projection(event: events.Allocated, uow: AbstractUnitOfWork) -> None:
            if collisions[0] > 0:
                collisions[0] -= 1
                raise ConcurrencyError("projection row locked")
            await handlers.add_allocation_to_read_model(event, uow)

        inline = {**INLINE, events.Allocated: {"projection": contended_projection}}

        await make_bus(lambda: ConflictingUnitOfWork(store, inline)).handle(
            commands.Allocate(orderid, sku, 10)
        )

        assert collisions == [0]
        assert available(store, sku) == 90
        assert store.read_model.allocations_of(orderid) == [{"sku": sku, "batchref": ref}]


class TestEventChains:
    async def test_events_raised_by_inline_handlers_are_handled_in_the_same_commit(
        self,
    ) -> None:
        store = FakeStore()
        sku, ref = random_ref("sku"), random_ref("batch")

        async def open_order(event: events.BatchCreated, uow: AbstractUnitOfWork) -> None:
            product = await uow.products.get(event.sku)
            assert product is not None
            product.allocate(model.OrderLine(f"open-{event.ref}", event.sku, 30))

        async def follow_up(event: events.Allocated, uow: AbstractUnitOfWork) -> None:
            product = await uow.products.get(event.sku)
            assert product is not None
            product.allocate(model.OrderLine(f"more-{event.orderid}", event.sku, 30))

        inline = {
            **INLINE,
            events.BatchCreated: {**INLINE[events.BatchCreated], "open_order": open_order},
            events.Allocated: {**INLINE[events.Allocated], "follow_up": follow_up},
        }
        commits = store.commits

        await make_bus(lambda: fake_uow(store, inline)).handle(commands.CreateBatch(ref, sku, 50))

        # BatchCreated -> Allocated -> (read model; follow-up order) -> OutOfStock, one commit
        assert store.commits == commits + 1
        assert store.read_model.allocations_of(f"open-{ref}") == [{"sku": sku, "batchref": ref}]
        assert store.read_model.allocations_of(f"more-open-{ref}") == []
        assert [type(e) for e in store.outbox.pending()] == [events.Allocated, events.OutOfStock]

    async def test_concurrent_calls_each_handle_their_own_events(self) -> None:
        store = FakeStore()
        in_stock = {random_ref("sku"): random_ref("order") for _ in range(5)}
        sold_out = {random_ref("sku"): random_ref("order") for _ in range(5)}
        refs = {sku: await stock(store, sku, 10) for sku in in_stock | sold_out}
        bus = make_bus(lambda: YieldingUnitOfWork(store, inline=INLINE, after_commit=AFTER_COMMIT))

        async def allocate(delay: int, sku: str, orderid: str, qty: int) -> None:
            for _ in range(delay):  # start while earlier calls are mid-way through theirs
                await asyncio.sleep(0)
            await bus.handle(commands.Allocate(orderid, sku, qty))
            # handle() returns once its own commit has projected its own events
            if qty <= 10:
                assert store.read_model.allocations_of(orderid) == [
                    {"sku": sku, "batchref": refs[sku]}
                ]

        calls = [
            call
            for fits, too_many in zip(in_stock.items(), sold_out.items(), strict=True)
            for call in [(*fits, 10), (*too_many, 11)]
        ]
        await asyncio.gather(*(allocate(i, *call) for i, call in enumerate(calls)))

        out_of_stock = [e for e in store.outbox.pending() if isinstance(e, events.OutOfStock)]
        assert sorted(e.sku for e in out_of_stock) == sorted(sold_out)
        for orderid in sold_out.values():
            assert store.read_model.allocations_of(orderid) == []
