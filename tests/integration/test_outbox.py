"""The SQLAlchemy outbox and its ledger, and how the unit of work writes to them.

Every test has a database of its own: a relay running elsewhere on a shared
database (the e2e tests' servers run one) would claim these tests' events,
and claims and stats look at the whole outbox.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.adapters import orm
from app.adapters.database import build_engine
from app.adapters.outbox import (
    OutboxStats,
    Pending,
    SqlAlchemyOutbox,
    deserialise,
    serialise,
    utcnow,
)
from app.domain import events, model
from app.faults import Faults, InjectedFault
from app.service_layer.unit_of_work import AlreadyHandled, SqlAlchemyUnitOfWork
from tests.conftest import random_ref
from tests.databases import alembic_upgrade

LEASE = timedelta(seconds=30)
LATER = timedelta(hours=1)
Sessions = async_sessionmaker[AsyncSession]


async def own_database(url: str) -> AsyncIterator[Sessions]:
    await asyncio.to_thread(alembic_upgrade, url)
    orm.start_mappers()
    engine = build_engine(url)
    try:
        yield async_sessionmaker(engine, expire_on_commit=False)
    finally:
        await engine.dispose()


@pytest.fixture
async def sessions(empty_database_url: str) -> AsyncIterator[Sessions]:
    """Sessions on a migrated database of this test's own, SQLite and then PostgreSQL."""
    async for factory in own_database(empty_database_url):
        yield factory


@pytest.fixture
async def postgres_sessions(empty_postgres_url: str) -> AsyncIterator[Sessions]:
    async for factory in own_database(empty_postgres_url):
        yield factory


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


async def add(sessions: Sessions, new: list[events.Event], available_at: datetime) -> None:
    async with sessions() as session:
        await SqlAlchemyOutbox(session).add(new, available_at)
        await session.commit()


async def add_due(sessions: Sessions, *new: events.Event) -> None:
    await add(sessions, list(new), utcnow() - timedelta(minutes=1))


async def claim(sessions: Sessions, limit: int = 100, lease: timedelta = LEASE) -> list[Pending]:
    async with sessions() as session:
        claimed = await SqlAlchemyOutbox(session).claim(limit, lease)
        await session.commit()
    return claimed


async def complete(sessions: Sessions, event_id: str) -> None:
    async with sessions() as session:
        await SqlAlchemyOutbox(session).complete(event_id)
        await session.commit()


async def failed(sessions: Sessions, event_id: str, error: str, retry_at: datetime) -> None:
    async with sessions() as session:
        await SqlAlchemyOutbox(session).failed(event_id, error, retry_at)
        await session.commit()


async def record_handled(sessions: Sessions, event_id: str, handler: str) -> bool:
    async with sessions() as session:
        recorded = await SqlAlchemyOutbox(session).record_handled(event_id, handler)
        await session.commit()
    return recorded


async def stats(sessions: Sessions, failing_after: int = 3) -> OutboxStats:
    async with sessions() as session:
        return await SqlAlchemyOutbox(session).stats(failing_after)


async def prune(sessions: Sessions, before: datetime) -> int:
    async with sessions() as session:
        removed = await SqlAlchemyOutbox(session).prune(before)
        await session.commit()
    return removed


async def outbox_row(sessions: Sessions, event_id: str) -> dict[str, Any] | None:
    async with sessions() as session:
        row = (
            await session.execute(select(orm.outbox).where(orm.outbox.c.id == event_id))
        ).one_or_none()
    return None if row is None else row._asdict()


async def ledger(sessions: Sessions) -> set[tuple[str, str]]:
    p = orm.processed_messages.c
    async with sessions() as session:
        return {(m, h) for m, h in await session.execute(select(p.message_id, p.handler))}


def ids(claimed: list[Pending]) -> list[str]:
    return [p.event.id for p in claimed]


class TestClaim:
    async def test_events_round_trip_with_their_ids(self, sessions: Sessions) -> None:
        created, placed = batch_created(eta=date(2011, 1, 2)), allocated()
        await add_due(sessions, created, placed)

        claimed = await claim(sessions)

        assert sorted(claimed, key=lambda p: type(p.event).__name__) == [
            Pending(placed, attempts=0, handled=frozenset()),
            Pending(created, attempts=0, handled=frozenset()),
        ]
        by_id = {p.event.id: p.event for p in claimed}
        assert by_id.keys() == {created.id, placed.id}
        assert by_id[created.id] == created
        assert isinstance(by_id[created.id], events.BatchCreated)
        assert by_id[placed.id] == placed

    async def test_events_not_yet_due_or_completed_are_not_claimed(
        self, sessions: Sessions
    ) -> None:
        due, done, not_yet = allocated(), allocated(), allocated()
        await add_due(sessions, due, done)
        await add(sessions, [not_yet], utcnow() + LATER)
        await complete(sessions, done.id)

        assert ids(await claim(sessions)) == [due.id]

    async def test_a_claimed_event_is_not_claimed_again_until_its_lease_runs_out(
        self, sessions: Sessions
    ) -> None:
        event = allocated()
        await add_due(sessions, event)

        assert ids(await claim(sessions, lease=timedelta(0))) == [event.id]
        assert ids(await claim(sessions, lease=LEASE)) == [event.id]
        assert await claim(sessions) == []

        row = await outbox_row(sessions, event.id)
        assert row is not None
        assert row["available_at"] > utcnow() + LEASE / 2

    async def test_claim_takes_at_most_limit_events(self, sessions: Sessions) -> None:
        new = [allocated() for _ in range(5)]
        await add_due(sessions, *new)

        first = await claim(sessions, limit=3)
        rest = await claim(sessions, limit=3)

        assert len(first) == 3
        assert len(rest) == 2
        assert sorted(ids(first) + ids(rest)) == sorted(e.id for e in new)

    async def test_claim_says_which_handlers_already_ran(self, sessions: Sessions) -> None:
        event, other = allocated(), allocated()
        await add_due(sessions, event, other)
        assert await record_handled(sessions, event.id, "add_allocation_to_read_model")
        assert await record_handled(sessions, event.id, "update_batch_read_model")

        claimed = {p.event.id: p.handled for p in await claim(sessions)}

        assert claimed == {
            event.id: {"add_allocation_to_read_model", "update_batch_read_model"},
            other.id: frozenset(),
        }


class TestDelivery:
    async def test_record_handled_is_false_the_second_time(self, sessions: Sessions) -> None:
        event_id = allocated().id

        assert await record_handled(sessions, event_id, "publish_allocated_event")
        assert not await record_handled(sessions, event_id, "publish_allocated_event")
        assert await record_handled(sessions, event_id, "update_batch_read_model")
        assert await record_handled(sessions, allocated().id, "publish_allocated_event")

    async def test_complete_ends_delivery_and_clears_the_error(self, sessions: Sessions) -> None:
        event = allocated()
        await add_due(sessions, event)
        await failed(sessions, event.id, "publish_allocated_event: boom", utcnow())

        await complete(sessions, event.id)

        row = await outbox_row(sessions, event.id)
        assert row is not None
        assert row["completed_at"] is not None
        assert row["last_error"] is None
        assert await claim(sessions) == []

    async def test_failed_counts_the_attempt_and_sets_when_to_try_again(
        self, sessions: Sessions
    ) -> None:
        event = allocated()
        await add_due(sessions, event)
        retry_at = (utcnow() + LATER).replace(microsecond=0)

        await failed(sessions, event.id, "publish_allocated_event: boom", retry_at)

        row = await outbox_row(sessions, event.id)
        assert row is not None
        assert (row["attempts"], row["last_error"], row["available_at"]) == (
            1,
            "publish_allocated_event: boom",
            retry_at,
        )
        assert row["completed_at"] is None
        assert await claim(sessions) == []

        await failed(sessions, event.id, "again", utcnow() - timedelta(seconds=1))
        [pending] = await claim(sessions)
        assert (pending.event.id, pending.attempts) == (event.id, 2)

    async def test_failed_does_not_reopen_a_completed_event(self, sessions: Sessions) -> None:
        event = allocated()
        await add_due(sessions, event)
        await complete(sessions, event.id)

        await failed(sessions, event.id, "late", utcnow() - timedelta(seconds=1))

        row = await outbox_row(sessions, event.id)
        assert row is not None
        assert (row["attempts"], row["last_error"]) == (0, None)
        assert row["completed_at"] is not None
        assert await claim(sessions) == []

    async def test_stats_count_what_is_pending_and_what_keeps_failing(
        self, sessions: Sessions
    ) -> None:
        assert await stats(sessions) == OutboxStats(0, 0, None)
        fine, failing, done = allocated(), allocated(), allocated()
        await add_due(sessions, fine, failing, done)
        await complete(sessions, done.id)
        for _ in range(3):
            await failed(sessions, failing.id, "boom", utcnow())

        outbox = await stats(sessions, failing_after=3)

        assert (outbox.pending, outbox.failing) == (2, 1)
        assert outbox.oldest_pending_age is not None
        assert 0 <= outbox.oldest_pending_age < 600
        assert (await stats(sessions, failing_after=4)).failing == 0

    async def test_prune_forgets_delivered_events_and_their_ledger(
        self, sessions: Sessions
    ) -> None:
        delivered, pending = allocated(), allocated()
        await add_due(sessions, delivered, pending)
        for event in (delivered, pending):
            assert await record_handled(sessions, event.id, "update_batch_read_model")
        await complete(sessions, delivered.id)

        assert await prune(sessions, before=utcnow() - LATER) == 0
        assert await prune(sessions, before=utcnow() + LATER) == 1

        assert await outbox_row(sessions, delivered.id) is None
        assert await outbox_row(sessions, pending.id) is not None
        assert await ledger(sessions) == {(pending.id, "update_batch_read_model")}


class TestUnitOfWork:
    async def test_commit_stores_the_events_raised_leased_to_the_committer(
        self, sessions: Sessions
    ) -> None:
        sku, ref = random_ref("sku"), random_ref("batch")
        before = utcnow()

        async with SqlAlchemyUnitOfWork(sessions, lease=LEASE) as uow:
            product = model.Product(sku, [])
            uow.products.add(product)
            product.add_batch(model.Batch(ref, sku, 10, date(2011, 1, 2)))
            await uow.commit()
        [event] = list(uow.collect_new_events())

        assert event == events.BatchCreated(
            sku=sku, ref=ref, qty=10, eta=date(2011, 1, 2), version=1
        )
        row = await outbox_row(sessions, event.id)
        assert row is not None
        assert (row["type"], row["sku"], row["version"], row["attempts"]) == (
            "BatchCreated",
            sku,
            1,
            0,
        )
        assert deserialise(row["type"], row["payload"]) == event
        assert row["available_at"] >= before + LEASE
        assert await claim(sessions) == []

    async def test_leaving_without_commit_stores_no_event(self, sessions: Sessions) -> None:
        sku = random_ref("sku")
        async with SqlAlchemyUnitOfWork(sessions) as uow:
            product = model.Product(sku, [])
            uow.products.add(product)
            product.add_batch(model.Batch(random_ref("batch"), sku, 10, None))
            await uow.session.flush()

        assert await stats(sessions) == OutboxStats(0, 0, None)

    async def test_a_handler_already_recorded_for_the_event_commits_nothing(
        self, sessions: Sessions
    ) -> None:
        event_id = allocated().id
        skus = [random_ref("sku"), random_ref("sku")]

        async def handle(sku: str) -> None:
            async with SqlAlchemyUnitOfWork(sessions) as uow:
                uow.handling = (event_id, "open_a_product")
                uow.products.add(model.Product(sku, [model.Batch(random_ref("b"), sku, 1, None)]))
                await uow.commit()

        await handle(skus[0])
        with pytest.raises(AlreadyHandled):
            await handle(skus[1])

        async with SqlAlchemyUnitOfWork(sessions) as uow:
            assert await uow.products.get(skus[0]) is not None
            assert await uow.products.get(skus[1]) is None
        assert await ledger(sessions) == {(event_id, "open_a_product")}

    async def test_a_fault_at_a_handlers_commit_leaves_it_unrecorded(
        self, sessions: Sessions
    ) -> None:
        event_id, sku, faults = allocated().id, random_ref("sku"), Faults()
        faults.arm("commit:open_a_product")

        async def handle() -> None:
            async with SqlAlchemyUnitOfWork(sessions, faults=faults) as uow:
                uow.handling = (event_id, "open_a_product")
                uow.products.add(model.Product(sku, [model.Batch(random_ref("b"), sku, 1, None)]))
                await uow.commit()

        with pytest.raises(InjectedFault):
            await handle()

        assert await ledger(sessions) == set()
        async with SqlAlchemyUnitOfWork(sessions) as uow:
            assert await uow.products.get(sku) is None
        await handle()
        assert await ledger(sessions) == {(event_id, "open_a_product")}


@pytest.mark.postgres
async def test_concurrent_claims_never_share_an_event(postgres_sessions: Sessions) -> None:
    new = [allocated() for _ in range(6)]
    await add_due(postgres_sessions, *new)
    both_claimed = asyncio.Barrier(2)

    async def claim_and_hold(limit: int) -> list[str]:
        async with postgres_sessions() as session:
            claimed = await SqlAlchemyOutbox(session).claim(limit, LEASE)
            # Neither commits until both have claimed: each claim meets the
            # other's row locks, not its committed lease.
            await both_claimed.wait()
            await session.commit()
        return ids(claimed)

    # Were the claims to wait for each other's locks, they would never reach the barrier.
    async with asyncio.timeout(10):
        first, second = await asyncio.gather(claim_and_hold(4), claim_and_hold(4))

    assert set(first).isdisjoint(second)
    assert sorted(first + second) == sorted(e.id for e in new)
    assert await claim(postgres_sessions) == []


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
