"""Group commit: commands for one product that arrive while a transaction on it is in flight.

First the queue on its own (app.service_layer.group_commit), with a
transaction that is a test's function; then the bus's groups on fakes: each
caller gets its own outcome, one command's refusal leaves the others alone,
a collision runs the whole group again, and a command that fails after it
changed the product sends the group back to one command per transaction.
Whether the outcomes are those of one command at a time, concurrent
callers and PostgreSQL included, is tests/integration/test_group_commit.py's.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Self

import pytest

from app.adapters.database_errors import ConcurrencyError
from app.backoff import Backoff
from app.domain import commands, events, model
from app.service_layer import handlers
from app.service_layer.delivery import Delivery
from app.service_layer.group_commit import GroupCommit, Outcome
from app.service_layer.messagebus import CommandHandler, MessageBus, RetryPolicy
from app.service_layer.unit_of_work import AbstractUnitOfWork
from tests.support.fakes import FakeStore, FakeUnitOfWork
from tests.support.refs import random_ref

INLINE = handlers.INLINE_HANDLERS
AFTER_COMMIT = frozenset({events.Allocated, events.OutOfStock})


class Transactions:
    """A transaction for the queue: it records each group, and waits for the test to end it."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.tasks: list[asyncio.Task[object] | None] = []
        self.release = asyncio.Event()

    async def run(self, items: list[str]) -> list[Outcome]:
        self.groups.append(items)
        self.tasks.append(asyncio.current_task())
        await self.release.wait()
        return [ValueError(item) if item.startswith("bad") else [] for item in items]


async def until(condition: object, turns: int = 100) -> None:
    """Give the other tasks turns of the loop until ``condition()`` holds."""
    assert callable(condition)
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


class TestTheQueue:
    async def test_a_command_alone_runs_at_once_in_its_callers_task(self) -> None:
        queue: GroupCommit[str] = GroupCommit()
        transactions = Transactions()
        transactions.release.set()

        assert await queue.submit("sku", "a", transactions.run) == []

        assert transactions.groups == [["a"]]
        assert transactions.tasks == [asyncio.current_task()]

    async def test_commands_that_arrive_meanwhile_share_the_next_transaction_in_order(
        self,
    ) -> None:
        queue: GroupCommit[str] = GroupCommit()
        transactions = Transactions()
        first = asyncio.create_task(queue.submit("sku", "first", transactions.run))
        await until(lambda: transactions.groups)
        later = [
            asyncio.create_task(queue.submit("sku", item, transactions.run))
            for item in ("b", "bad-c", "d")
        ]
        elsewhere = asyncio.create_task(queue.submit("other-sku", "e", transactions.run))
        await until(lambda: len(transactions.groups) == 2)

        transactions.release.set()
        results = await asyncio.gather(first, *later, elsewhere, return_exceptions=True)

        assert transactions.groups == [["first"], ["e"], ["b", "bad-c", "d"]]
        assert results[0] == []
        assert results[1] == []
        assert isinstance(results[2], ValueError)  # its own outcome, and only its
        assert str(results[2]) == "bad-c"
        assert results[3:] == [[], []]

    async def test_a_caller_that_gives_up_while_waiting_leaves_its_group(self) -> None:
        queue: GroupCommit[str] = GroupCommit()
        transactions = Transactions()
        first = asyncio.create_task(queue.submit("sku", "first", transactions.run))
        await until(lambda: transactions.groups)
        gone = asyncio.create_task(queue.submit("sku", "gone", transactions.run))
        stays = asyncio.create_task(queue.submit("sku", "stays", transactions.run))
        await asyncio.sleep(0)
        gone.cancel()

        transactions.release.set()
        await first
        assert await stays == []

        assert transactions.groups == [["first"], ["stays"]]
        assert gone.cancelled()

    async def test_a_caller_that_gives_up_once_its_group_runs_still_has_its_command_handled(
        self,
    ) -> None:
        queue: GroupCommit[str] = GroupCommit()
        gates = [asyncio.Event(), asyncio.Event()]
        handled: list[list[str]] = []

        async def run(items: list[str]) -> list[Outcome]:
            handled.append(items)
            await gates[len(handled) - 1].wait()
            return [[] for _ in items]

        first = asyncio.create_task(queue.submit("sku", "first", run))
        await until(lambda: handled)
        gone = asyncio.create_task(queue.submit("sku", "gone", run))
        await asyncio.sleep(0)
        gates[0].set()
        await first
        await until(lambda: len(handled) == 2)  # its group is in flight
        gone.cancel()
        gates.append(asyncio.Event())
        gates[1].set()
        gates[2].set()
        await queue.submit("sku", "after", run)  # once the lane is free again

        assert handled == [["first"], ["gone"], ["after"]]
        assert gone.cancelled()

    async def test_a_group_holds_at_most_max_size_commands(self) -> None:
        queue: GroupCommit[str] = GroupCommit(max_size=2)
        transactions = Transactions()
        first = asyncio.create_task(queue.submit("sku", "first", transactions.run))
        await until(lambda: transactions.groups)
        rest = [
            asyncio.create_task(queue.submit("sku", f"c{n}", transactions.run)) for n in range(5)
        ]
        await asyncio.sleep(0)

        transactions.release.set()
        await asyncio.gather(first, *rest)

        assert transactions.groups == [["first"], ["c0", "c1"], ["c2", "c3"], ["c4"]]

    async def test_a_transaction_that_fails_fails_each_command_of_it(self) -> None:
        queue: GroupCommit[str] = GroupCommit()
        transactions = Transactions()

        async def fails(items: list[str]) -> list[Outcome]:
            await transactions.run(items)
            raise ConnectionResetError("the database went away")

        first = asyncio.create_task(queue.submit("sku", "first", fails))
        await until(lambda: transactions.groups)
        later = [asyncio.create_task(queue.submit("sku", item, fails)) for item in "ab"]
        await asyncio.sleep(0)
        transactions.release.set()

        results = await asyncio.gather(first, *later, return_exceptions=True)

        assert all(isinstance(r, ConnectionResetError) for r in results), results
        # and the queue is empty again: the next command runs at once
        assert await queue.submit("sku", "next", transactions.run) == []


class GatedUnitOfWork(FakeUnitOfWork):
    """Rolled back unless committed, like the real one; the first waits at a gate on entering.

    While it waits, the commands that arrive queue up for the next
    transaction: a test sees its group form.
    """

    def __init__(self, store: Store) -> None:
        super().__init__(store, inline=INLINE, after_commit=AFTER_COMMIT)
        self.gated = store
        self.snapshot: dict[str, model.Product] = {}
        self.done = False
        self.first = False

    async def __aenter__(self) -> Self:
        self.snapshot = copy.deepcopy(self.store.products)
        self.gated.entered += 1
        self.first = self.gated.entered == 1
        if self.first:
            await self.gated.gate.wait()
        return await super().__aenter__()

    async def commit(self) -> None:
        if self.gated.conflicts > 0 and not self.first:
            self.gated.conflicts -= 1
            raise ConcurrencyError("could not serialize access due to concurrent update")
        await super().commit()
        self.done = True
        self.gated.committed.append(list(self.committed_events))

    async def rollback(self) -> None:
        if not self.done:
            self.store.products.clear()
            self.store.products.update(self.snapshot)


class Store(FakeStore):
    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = 0  # units of work entered
        self.conflicts = 0  # commits still to lose to a concurrent writer, after the first
        self.committed: list[list[events.Event]] = []  # each commit's events


def grouped_bus(store: Store, allocate: CommandHandler = handlers.allocate) -> MessageBus:
    def uow() -> AbstractUnitOfWork:
        return GatedUnitOfWork(store)

    return MessageBus(
        uow_factory=uow,
        command_handlers={commands.CreateBatch: handlers.add_batch, commands.Allocate: allocate},
        retry=RetryPolicy(attempts=3, backoff=Backoff(0.0001, 0.001, jitter=True)),
        delivery=Delivery(uow, handlers={}),
        groupings=handlers.GROUPINGS,
        group_commit=GroupCommit(),
    )


async def as_a_group(
    store: Store, bus: MessageBus, lines: list[commands.Allocate]
) -> list[BaseException | None]:
    """Send ``lines`` while an allocation of their sku is in flight: they go as one group."""
    sku = lines[0].sku
    opener = asyncio.create_task(bus.handle(commands.Allocate(random_ref("opener"), sku, 1)))
    await until(lambda: store.entered == 1)
    calls = [asyncio.create_task(bus.handle(line)) for line in lines]
    await asyncio.sleep(0)
    store.gate.set()
    await opener
    return list(await asyncio.gather(*calls, return_exceptions=True))


async def at_once(store: Store, command: commands.Command) -> None:
    """Handle ``command`` with the gate open; the next unit of work waits at it again."""
    store.gate.set()
    await grouped_bus(store).handle(command)
    store.gate.clear()
    store.entered, store.committed = 0, []


async def stocked(store: Store, qty: int) -> tuple[str, str]:
    sku, ref = random_ref("sku"), random_ref("batch")
    await at_once(store, commands.CreateBatch(ref, sku, qty))
    return sku, ref


def allocated(store: Store, sku: str) -> dict[str, str]:
    """orderid: batch of every line of ``sku`` the store holds."""
    return {
        line.orderid: batch.reference
        for batch in store.products[sku].batches
        for line in batch.allocations
    }


class TestGroupsOnTheBus:
    async def test_a_group_is_one_commit_and_each_caller_gets_its_own_outcome(self) -> None:
        store = Store()
        sku, ref = await stocked(store, 5)
        held = random_ref("held")
        await at_once(store, commands.Allocate(held, sku, 1))  # before the group
        bus = grouped_bus(store)
        fits, last, refused = (random_ref(n) for n in ("fits", "last", "refused"))

        outcomes = await as_a_group(
            store,
            bus,
            [
                commands.Allocate(fits, sku, 1),
                commands.Allocate(held, sku, 2),  # holds 1 already
                commands.Allocate(last, sku, 2),
                commands.Allocate(refused, sku, 1),  # nothing left
            ],
        )

        assert outcomes[0] is None
        assert isinstance(outcomes[1], model.LineConflict)
        assert outcomes[2:] == [None, None]
        assert len(store.committed) == 2  # the opener's, then the group's
        group = store.committed[1]
        assert [(type(e), getattr(e, "orderid", None)) for e in group] == [
            (events.Allocated, fits),
            (events.Allocated, last),
            (events.LineRefused, refused),
            (events.OutOfStock, refused),
        ]
        assert allocated(store, sku) == dict.fromkeys([held, fits, last], ref) | {
            o: ref for o in allocated(store, sku) if o.startswith("opener")
        }
        assert store.read_model.refused == {(refused, sku): 1}

    async def test_a_collision_runs_the_whole_group_again(self) -> None:
        store = Store()
        sku, ref = await stocked(store, 10)
        bus = grouped_bus(store)
        orders = [random_ref("order") for _ in range(3)]
        store.conflicts = 1  # the group's first commit loses

        outcomes = await as_a_group(store, bus, [commands.Allocate(o, sku, 2) for o in orders])

        assert outcomes == [None, None, None]

        assert store.conflicts == 0
        assert [len(c) for c in store.committed] == [1, 3]  # the group committed once
        assert {o: allocated(store, sku)[o] for o in orders} == dict.fromkeys(orders, ref)
        assert sum(b.allocated_quantity for b in store.products[sku].batches) == 7

    async def test_a_command_that_fails_after_changing_the_product_does_not_sink_the_group(
        self,
    ) -> None:
        store = Store()
        sku, ref = await stocked(store, 10)
        faulty = random_ref("faulty")

        async def allocate_or_fail_half_way(
            cmd: commands.Allocate, uow: AbstractUnitOfWork
        ) -> None:
            async with uow:
                product = await uow.products.get(cmd.sku, orderid=cmd.orderid)
                assert product is not None
                product.allocate(model.OrderLine(cmd.orderid, cmd.sku, cmd.qty))
                if cmd.orderid == faulty:
                    raise RuntimeError("a bug, after the change")
                await uow.commit()

        bus = grouped_bus(store, allocate=allocate_or_fail_half_way)
        before, after = random_ref("before"), random_ref("after")

        outcomes = await as_a_group(
            store,
            bus,
            [
                commands.Allocate(before, sku, 2),
                commands.Allocate(faulty, sku, 3),
                commands.Allocate(after, sku, 4),
            ],
        )

        assert outcomes[0] is None
        assert isinstance(outcomes[1], RuntimeError)
        assert outcomes[2] is None
        # One transaction each, in order: the faulty one's change is rolled back.
        assert [[e.orderid for e in c if isinstance(e, events.Allocated)] for c in store.committed][
            1:
        ] == [[before], [after]]
        lines = allocated(store, sku)
        assert (lines[before], lines[after], faulty in lines) == (ref, ref, False)
        assert sum(b.allocated_quantity for b in store.products[sku].batches) == 1 + 2 + 4


@pytest.mark.parametrize("qty", [1, 3])
async def test_an_unknown_sku_is_refused_for_every_line_of_its_group(qty: int) -> None:
    store = Store()
    store.gate.set()
    bus = grouped_bus(store)
    sku = random_ref("unknown")

    outcomes = await asyncio.gather(
        *(bus.handle(commands.Allocate(random_ref("o"), sku, qty)) for _ in range(4)),
        return_exceptions=True,
    )

    assert all(isinstance(o, handlers.InvalidSku) for o in outcomes), outcomes
    assert sku not in store.products
