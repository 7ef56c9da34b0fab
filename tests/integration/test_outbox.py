"""The SQLAlchemy outbox and its ledger, and how the unit of work writes to them.

Every test has a database of its own: a relay running elsewhere on a shared
database (the e2e tests' servers run one) would claim these tests' events,
and claims and stats look at the whole outbox.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import date, datetime, timedelta
from typing import Any, TypeVar

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters import tables
from app.adapters.database_errors import DatabaseUnavailable
from app.adapters.engines import build_engine
from app.adapters.outbox import (
    FailingEvent,
    OutboxStats,
    Pending,
    SqlOutbox,
    deserialise,
    serialise,
)
from app.adapters.transactions import Transaction, transaction
from app.clock import utcnow
from app.domain import events, model
from app.service_layer.unit_of_work import SqlUnitOfWork
from tests.support.databases import alembic_upgrade
from tests.support.refs import random_ref

LATER = timedelta(hours=1)
T = TypeVar("T")


async def own_database(url: str) -> AsyncIterator[AsyncEngine]:
    await asyncio.to_thread(alembic_upgrade, url)
    engine = build_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def engine(empty_database_url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated database of this test's own, SQLite and then PostgreSQL."""
    async for engine in own_database(empty_database_url):
        yield engine


@pytest.fixture
async def postgres_engine(empty_postgres_url: str) -> AsyncIterator[AsyncEngine]:
    async for engine in own_database(empty_postgres_url):
        yield engine


def batch_created(eta: date | None = None) -> events.BatchCreated:
    return events.BatchCreated(
        sku=random_ref("sku"), ref=random_ref("batch"), qty=10, eta=eta, version=1
    )


def allocated() -> events.Allocated:
    return events.Allocated(
        orderid=random_ref("order"),
        sku=random_ref("sku"),
        qty=3,
        batchref=random_ref("batch"),
        version=2,
    )


@asynccontextmanager
async def open_outbox(engine: AsyncEngine) -> AsyncIterator[tuple[SqlOutbox, Transaction]]:
    """The outbox on a transaction of its own, rolled back unless committed."""
    tx = transaction(engine)
    try:
        yield SqlOutbox(tx), tx
    finally:
        await tx.close()


async def committed(engine: AsyncEngine, work: Callable[[SqlOutbox], Awaitable[T]]) -> T:
    """``work`` on the outbox, in a transaction that commits."""
    async with open_outbox(engine) as (outbox, tx):
        result = await work(outbox)
        await tx.commit()
    return result


async def add(engine: AsyncEngine, *new: events.Event) -> None:
    await committed(engine, lambda outbox: outbox.add(list(new)))


async def claim(engine: AsyncEngine, limit: int = 100) -> list[Pending]:
    return await committed(engine, lambda outbox: outbox.claim(limit))


async def delivered(engine: AsyncEngine, *event_ids: str) -> None:
    await committed(engine, lambda outbox: outbox.delivered(list(event_ids)))


async def retry_later(
    engine: AsyncEngine,
    event_id: str,
    error: str,
    retry_at: datetime,
    finished: tuple[str, ...] = (),
) -> None:
    await committed(
        engine, lambda outbox: outbox.retry_later(event_id, error, retry_at, list(finished))
    )


async def stats(engine: AsyncEngine, failing_after: int = 3) -> OutboxStats:
    return await committed(engine, lambda outbox: outbox.stats(failing_after))


async def prune(engine: AsyncEngine, before: datetime, limit: int = 100) -> int:
    return await committed(engine, lambda outbox: outbox.prune(before, limit))


async def outbox_row(engine: AsyncEngine, event_id: str) -> dict[str, Any] | None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(tables.outbox).where(tables.outbox.c.id == event_id))
        ).one_or_none()
    return None if row is None else row._asdict()


async def ledger(engine: AsyncEngine) -> set[tuple[str, str]]:
    p = tables.processed_messages.c
    async with engine.connect() as conn:
        return {(m, h) for m, h in await conn.execute(select(p.message_id, p.handler))}


def ids(claimed: list[Pending]) -> list[str]:
    return [p.event.id for p in claimed]


class TestClaim:
    async def test_events_round_trip_with_their_ids(self, engine: AsyncEngine) -> None:
        created, placed = batch_created(eta=date(2011, 1, 2)), allocated()
        await add(engine, created, placed)

        claimed = await claim(engine)

        assert sorted(claimed, key=lambda p: type(p.event).__name__) == [
            Pending(placed, attempts=0, handled=frozenset()),
            Pending(created, attempts=0, handled=frozenset()),
        ]
        by_id = {p.event.id: p.event for p in claimed}
        assert by_id.keys() == {created.id, placed.id}
        assert by_id[created.id] == created
        assert isinstance(by_id[created.id], events.BatchCreated)
        assert by_id[placed.id] == placed

    async def test_events_not_yet_due_or_delivered_are_not_claimed(
        self, engine: AsyncEngine
    ) -> None:
        due, done, not_yet = allocated(), allocated(), allocated()
        await add(engine, due, done, not_yet)
        await delivered(engine, done.id)
        await retry_later(engine, not_yet.id, "boom", utcnow() + LATER)

        assert ids(await claim(engine)) == [due.id]

    async def test_a_claim_that_ends_unsettled_leaves_its_events_due_at_once(
        self, engine: AsyncEngine
    ) -> None:
        # As when the process delivering them dies mid-pass: nothing waits for a lease.
        event = allocated()
        await add(engine, event)

        async with open_outbox(engine) as (outbox, _):
            assert ids(await outbox.claim(100)) == [event.id]

        [again] = await claim(engine)
        assert again == Pending(event, attempts=0, handled=frozenset())

    async def test_a_pass_that_fails_to_settle_changes_nothing(self, engine: AsyncEngine) -> None:
        event = allocated()
        await add(engine, event)

        async with open_outbox(engine) as (outbox, _):
            await outbox.claim(100)
            await outbox.retry_later(
                event.id, "boom", utcnow() + LATER, ["publish_allocated_event"]
            )
            # ...and the transaction is never committed.

        row = await outbox_row(engine, event.id)
        assert row is not None
        assert (row["attempts"], row["last_error"], row["completed_at"]) == (0, None, None)
        assert await ledger(engine) == set()
        assert ids(await claim(engine)) == [event.id]

    async def test_claim_takes_at_most_limit_events(self, engine: AsyncEngine) -> None:
        new = [allocated() for _ in range(5)]
        await add(engine, *new)

        first = await claim(engine, limit=3)
        await delivered(engine, *ids(first))
        rest = await claim(engine, limit=3)

        assert len(first) == 3
        assert len(rest) == 2
        assert sorted(ids(first) + ids(rest)) == sorted(e.id for e in new)

    async def test_claim_takes_the_oldest_due_first(self, engine: AsyncEngine) -> None:
        older, newer = allocated(), allocated()
        await add(engine, older)
        await add(engine, newer)

        assert ids(await claim(engine, limit=1)) == [older.id]

    async def test_claim_says_which_handlers_already_finished(self, engine: AsyncEngine) -> None:
        event, other = allocated(), allocated()
        await add(engine, event, other)
        await retry_later(
            engine, event.id, "audit: boom", utcnow(), finished=("publish_allocated_event",)
        )

        claimed = {p.event.id: (p.attempts, p.handled) for p in await claim(engine)}

        assert claimed == {
            event.id: (1, {"publish_allocated_event"}),
            other.id: (0, frozenset()),
        }


class TestSettling:
    async def test_retry_later_records_a_finished_handler_once(self, engine: AsyncEngine) -> None:
        event = allocated()
        await add(engine, event)

        for _ in range(2):
            await retry_later(
                engine, event.id, "audit: boom", utcnow(), ("publish_allocated_event",)
            )
        await retry_later(engine, event.id, "audit: boom", utcnow(), ("audit",))

        assert await ledger(engine) == {
            (event.id, "publish_allocated_event"),
            (event.id, "audit"),
        }
        [pending] = await claim(engine)
        assert pending.attempts == 3
        assert pending.handled == {"publish_allocated_event", "audit"}

    async def test_delivered_ends_delivery_and_clears_the_error(self, engine: AsyncEngine) -> None:
        event = allocated()
        await add(engine, event)
        await retry_later(engine, event.id, "publish_allocated_event: boom", utcnow())

        await delivered(engine, event.id)

        row = await outbox_row(engine, event.id)
        assert row is not None
        assert row["completed_at"] is not None
        assert row["last_error"] is None
        assert await claim(engine) == []

    async def test_retry_later_counts_the_attempt_and_sets_when_to_try_again(
        self, engine: AsyncEngine
    ) -> None:
        event = allocated()
        await add(engine, event)
        retry_at = (utcnow() + LATER).replace(microsecond=0)

        await retry_later(engine, event.id, "publish_allocated_event: boom", retry_at)

        row = await outbox_row(engine, event.id)
        assert row is not None
        assert (row["attempts"], row["last_error"], row["available_at"]) == (
            1,
            "publish_allocated_event: boom",
            retry_at,
        )
        assert row["completed_at"] is None
        assert await claim(engine) == []

        await retry_later(engine, event.id, "again", utcnow() - timedelta(seconds=1))
        [pending] = await claim(engine)
        assert (pending.event.id, pending.attempts) == (event.id, 2)

    async def test_stats_count_what_is_pending_and_what_keeps_failing(
        self, engine: AsyncEngine
    ) -> None:
        assert await stats(engine) == OutboxStats(0, 0, None, None)
        fine, failing, done = allocated(), allocated(), allocated()
        await add(engine, fine, failing, done)
        await delivered(engine, done.id)
        for _ in range(3):
            await retry_later(engine, failing.id, "boom", utcnow())

        outbox = await stats(engine, failing_after=3)

        assert (outbox.pending, outbox.failing) == (2, 1)
        assert outbox.oldest_pending_age is not None
        assert 0 <= outbox.oldest_pending_age < 600
        assert outbox.oldest_delivered_age is not None
        assert 0 <= outbox.oldest_delivered_age < 600
        assert (await stats(engine, failing_after=4)).failing == 0
        assert await committed(engine, lambda o: o.failing(3, 10)) == [
            FailingEvent(failing.id, "Allocated", 3, "boom")
        ]
        assert await committed(engine, lambda o: o.failing(4, 10)) == []

    async def test_prune_forgets_delivered_events_and_their_ledger(
        self, engine: AsyncEngine
    ) -> None:
        delivered_, pending = allocated(), allocated()
        await add(engine, delivered_, pending)
        for event in (delivered_, pending):
            await retry_later(engine, event.id, "audit: boom", utcnow(), ("audit",))
        await delivered(engine, delivered_.id)

        assert await prune(engine, before=utcnow() - LATER) == 0
        assert await prune(engine, before=utcnow() + LATER) == 1

        assert await outbox_row(engine, delivered_.id) is None
        assert await outbox_row(engine, pending.id) is not None
        assert await ledger(engine) == {(pending.id, "audit")}
        async with open_outbox(engine) as (outbox, _):
            await outbox.reclaim_space()  # VACUUM on PostgreSQL: outside the transaction

    async def test_prune_takes_at_most_limit_events_at_a_time(self, engine: AsyncEngine) -> None:
        new = [allocated() for _ in range(5)]
        await add(engine, *new)
        await delivered(engine, *(e.id for e in new))

        chunks = [await prune(engine, before=utcnow() + LATER, limit=2) for _ in range(4)]

        assert chunks == [2, 2, 1, 0]
        assert await stats(engine) == OutboxStats(0, 0, None, None)


class CommitFails(SqlUnitOfWork):
    """Fails at its commit, before committing: as when the database goes away then."""

    async def _commit(self) -> None:
        raise ConnectionResetError("injected failure before the commit")


class TestUnitOfWork:
    async def test_commit_stores_the_events_with_after_commit_handlers_due_at_once(
        self, engine: AsyncEngine
    ) -> None:
        sku, ref = random_ref("sku"), random_ref("batch")
        before = utcnow()

        async with SqlUnitOfWork(engine, after_commit={events.BatchCreated}) as uow:
            product = model.Product(sku, [])
            uow.products.add(product)
            product.add_batch(model.Batch(ref, sku, 10, date(2011, 1, 2)))
            await uow.commit()
        [event] = uow.committed_events

        assert event == events.BatchCreated(
            sku=sku, ref=ref, qty=10, eta=date(2011, 1, 2), version=1
        )
        row = await outbox_row(engine, event.id)
        assert row is not None
        assert (row["type"], row["sku"], row["version"], row["attempts"]) == (
            "BatchCreated",
            sku,
            1,
            0,
        )
        assert deserialise(row["type"], row["payload"]) == event
        assert before <= row["available_at"] <= utcnow()
        assert ids(await claim(engine)) == [event.id]

    async def test_events_without_after_commit_handlers_are_not_stored(
        self, engine: AsyncEngine
    ) -> None:
        sku = random_ref("sku")
        async with SqlUnitOfWork(engine, after_commit={events.Allocated}) as uow:
            product = model.Product(sku, [])
            uow.products.add(product)
            product.add_batch(model.Batch(random_ref("batch"), sku, 10, None))
            await uow.commit()

        assert [type(e) for e in uow.committed_events] == [events.BatchCreated]
        assert await stats(engine) == OutboxStats(0, 0, None, None)

    async def test_leaving_without_commit_stores_no_event(self, engine: AsyncEngine) -> None:
        sku = random_ref("sku")
        async with SqlUnitOfWork(engine, after_commit={events.BatchCreated}) as uow:
            product = model.Product(sku, [])
            uow.products.add(product)
            product.add_batch(model.Batch(random_ref("batch"), sku, 10, None))
            await uow.products.save()
            await uow.outbox.add(list(product.events))

        assert await stats(engine) == OutboxStats(0, 0, None, None)
        async with SqlUnitOfWork(engine) as uow:
            assert await uow.products.get(sku) is None

    async def test_a_commit_that_fails_stores_neither_the_change_nor_its_events(
        self, engine: AsyncEngine
    ) -> None:
        sku = random_ref("sku")

        async def create(uow: SqlUnitOfWork) -> None:
            async with uow:
                product = model.Product(sku, [])
                uow.products.add(product)
                product.add_batch(model.Batch(random_ref("b"), sku, 1, None))
                await uow.commit()

        with pytest.raises(DatabaseUnavailable, match="injected failure"):
            await create(CommitFails(engine, after_commit={events.BatchCreated}))

        assert await stats(engine) == OutboxStats(0, 0, None, None)
        async with SqlUnitOfWork(engine) as uow:
            assert await uow.products.get(sku) is None

        again = SqlUnitOfWork(engine, after_commit={events.BatchCreated})
        await create(again)
        [event] = again.committed_events
        assert ids(await claim(engine)) == [event.id]


@pytest.mark.postgres
async def test_concurrent_claims_never_share_an_event(postgres_engine: AsyncEngine) -> None:
    new = [allocated() for _ in range(6)]
    await add(postgres_engine, *new)
    both_claimed = asyncio.Barrier(2)

    async def claim_and_hold(limit: int) -> list[str]:
        async with open_outbox(postgres_engine) as (outbox, tx):
            claimed = await outbox.claim(limit)
            # Neither settles until both have claimed: each claim meets the
            # other's row locks, and skips them.
            await both_claimed.wait()
            await outbox.delivered(ids(claimed))
            await tx.commit()
        return ids(claimed)

    # Were the claims to wait for each other's locks, they would never reach the barrier.
    async with asyncio.timeout(10):
        first, second = await asyncio.gather(claim_and_hold(4), claim_and_hold(4))

    assert set(first).isdisjoint(second)
    assert sorted(first + second) == sorted(e.id for e in new)
    assert await claim(postgres_engine) == []


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(
            events.BatchCreated(sku="sku", ref="batch", qty=10, eta=date(2011, 1, 2), version=1),
            id="BatchCreated",
        ),
        pytest.param(
            events.BatchCreated(sku="sku", ref="batch", qty=10, eta=None, version=1),
            id="BatchCreated-no-eta",
        ),
        pytest.param(
            events.BatchQuantityChanged(sku="sku", ref="batch", qty=5, version=2),
            id="BatchQuantityChanged",
        ),
        pytest.param(
            events.Allocated(orderid="order", sku="sku", qty=3, batchref="batch", version=3),
            id="Allocated",
        ),
        pytest.param(
            events.Deallocated(orderid="order", sku="sku", qty=3, batchref="batch", version=4),
            id="Deallocated",
        ),
        pytest.param(events.OutOfStock(sku="sku"), id="OutOfStock"),
    ],
)
def test_every_event_round_trips_through_serialise(event: events.Event) -> None:
    payload = serialise(event)

    again = deserialise(type(event).__name__, payload)

    assert again == event
    assert type(again) is type(event)
    assert again.id == event.id
    assert payload["id"] == event.id


def allocations_of(sku: str, versions: list[int]) -> list[events.Allocated]:
    return [
        events.Allocated(orderid=random_ref("order"), sku=sku, qty=1, batchref="b", version=version)
        for version in versions
    ]


async def test_a_products_events_are_claimed_in_version_order_and_none_past_a_gap(
    engine: AsyncEngine,
) -> None:
    sku, other = random_ref("sku"), random_ref("sku")
    # Stored out of order, as two processes committing one after the other may.
    second, first, third = allocations_of(sku, [2, 1, 3])
    elsewhere = allocations_of(other, [7])
    await add(engine, second, first, third, *elsewhere)

    def of(claimed: list[Pending], product: str) -> list[str]:
        return [p.event.id for p in claimed if getattr(p.event, "sku", None) == product]

    claimed = await claim(engine)
    assert of(claimed, sku) == [first.id, second.id, third.id]
    assert of(claimed, other) == [elsewhere[0].id]

    # The first failed and is not due again yet: what comes after it waits for it.
    await retry_later(engine, first.id, "redis away", utcnow() + LATER)
    assert ids(await claim(engine)) == [elsewhere[0].id]
    await delivered(engine, first.id)
    claimed = await claim(engine)
    assert of(claimed, sku) == [second.id, third.id]


@pytest.mark.postgres
async def test_a_products_later_events_wait_while_another_relay_holds_an_earlier_one(
    postgres_engine: AsyncEngine,
) -> None:
    sku, other = random_ref("sku"), random_ref("sku")
    earliest, *later = allocations_of(sku, [1, 2, 3])
    elsewhere = allocations_of(other, [1])
    await add(postgres_engine, earliest, *later, *elsewhere)

    async with open_outbox(postgres_engine) as (outbox, _):
        held = await outbox.claim(1)  # another relay's pass, holding the earliest one
        assert ids(held) == [earliest.id]
        # Its product's others may not go ahead of it; other products' go.
        assert ids(await claim(postgres_engine)) == [elsewhere[0].id]
