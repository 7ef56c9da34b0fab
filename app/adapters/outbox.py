"""The outbox: events stored with the change that raised them, until delivered.

The events of a product that carry its version go out in version order:
one is claimed for delivery only once every earlier one of its product is
delivered, or claimed in the same pass (``in_order``), whichever relay, in
whichever process, holds the rest. Events of different products go out in
parallel.

It also keeps the ledger of which after-commit handler has finished with
which event, for events that one handler failed and another did not: their
redelivery runs only the unfinished ones.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import (
    Delete,
    Insert,
    Select,
    Update,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)

from app.adapters import tables
from app.adapters.driver import borrowed
from app.adapters.tables import insert_on_conflict
from app.adapters.transactions import Transaction
from app.clock import utcnow
from app.domain import events

EVENT_TYPES: dict[str, type[events.Event]] = {
    cls.__name__: cls for cls in events.Event.__subclasses__()
}
_ADAPTERS: dict[type[events.Event], TypeAdapter[Any]] = {
    cls: TypeAdapter(cls) for cls in EVENT_TYPES.values()
}


# An undelivered event is failing once a delivery of it has failed: the same
# word for `allocation outbox` and /metrics.
FAILING_AFTER = 1  # attempts


def serialise(event: events.Event) -> dict[str, Any]:
    payload: dict[str, Any] = _ADAPTERS[type(event)].dump_python(event, mode="json")
    return payload


def deserialise(type_name: str, payload: dict[str, Any]) -> events.Event:
    cls = EVENT_TYPES[type_name]
    event: events.Event = _ADAPTERS[cls].validate_python(payload)
    return event


@dataclass(frozen=True)
class Pending:
    """A claimed event, how often delivering it failed, and its handlers that finished."""

    event: events.Event
    attempts: int
    handled: frozenset[str]

    @property
    def version(self) -> int | None:
        """Its product's version after the change that raised it; None: it has no place."""
        version: int | None = getattr(self.event, "version", None)
        return version

    @property
    def product(self) -> str | None:
        """The product whose events this one goes out in order with; None: in no order."""
        sku: str | None = getattr(self.event, "sku", None)
        return sku if self.version is not None else None


def in_order(claimed: list[tuple[Pending, int]]) -> list[Pending]:
    """Of the events claimed, each with how many undelivered events of its product came
    before it, those that may go out now, each product's in version order.

    An event may go out when every earlier undelivered event of its product
    is claimed here too, and goes out after them: its count of earlier ones
    equals the number claimed here before it. The others wait for a pass
    that finds what comes before them delivered.
    """
    unordered = [pending for pending, _ in claimed if pending.product is None]
    by_product: dict[str, list[tuple[int, int, Pending]]] = {}
    for pending, earlier in claimed:
        if pending.product is not None and pending.version is not None:
            by_product.setdefault(pending.product, []).append((pending.version, earlier, pending))
    ordered = []
    for runs in by_product.values():
        for place, (_, earlier, pending) in enumerate(sorted(runs, key=lambda run: run[0])):
            if earlier != place:
                break  # an earlier one is held elsewhere, or not due yet
            ordered.append(pending)
    return unordered + ordered


@dataclass(frozen=True)
class OutboxStats:
    pending: int
    failing: int
    oldest_pending_age: float | None  # seconds
    oldest_delivered_age: float | None  # seconds: past the retention, pruning lags


@dataclass(frozen=True)
class FailingEvent:
    id: str
    type: str
    attempts: int
    last_error: str | None


class AbstractOutbox(abc.ABC):
    @abc.abstractmethod
    async def add(self, new: list[events.Event]) -> None:
        """Store events in the current transaction, due for delivery at once."""

    @abc.abstractmethod
    async def claim(self, limit: int) -> list[Pending]:
        """Of up to ``limit`` due events, oldest first, those that may go out now (``in_order``).

        They are held until this transaction ends. On PostgreSQL they are
        row-locked, and skipped by every other claim until then: if this
        process dies, the server ends the transaction and they are due again
        at once.
        """

    @abc.abstractmethod
    async def delivered(self, event_ids: list[str]) -> None: ...

    @abc.abstractmethod
    async def retry_later(
        self, event_id: str, error: str, retry_at: datetime, finished: list[str]
    ) -> None:
        """Count a failed delivery; record the handlers that ``finished`` with the event."""

    @abc.abstractmethod
    async def stats(self, failing_after: int) -> OutboxStats: ...

    @abc.abstractmethod
    async def failing(self, failing_after: int, limit: int) -> list[FailingEvent]:
        """The undelivered events tried most often, with their last error."""

    @abc.abstractmethod
    async def prune(self, before: datetime, limit: int) -> int:
        """Forget up to ``limit`` events delivered before ``before``, and their ledger."""

    @abc.abstractmethod
    async def reclaim_space(self) -> None:
        """Make what pruning freed reusable, where the database does not by itself."""


class _Statements:
    """Built once: compiling a statement costs more than running it here."""

    def __init__(self) -> None:
        o, p = tables.outbox.c, tables.processed_messages.c
        # (Parameters of INSERT and UPDATE may not be named as the table's columns.)
        self.add: Insert = insert(tables.outbox).values(
            {name: bindparam(f"new_{name}") for name in _ADDED}
        )
        e = tables.outbox.alias("earlier")
        earlier = (
            select(func.count())
            .where(
                e.c.completed_at.is_(None),
                e.c.sku == o.sku,
                e.c.version < o.version,
            )
            .scalar_subquery()
        )
        self.claim: Select[Any] = (
            select(o.id, o.type, o.payload, o.attempts, earlier)
            .where(o.completed_at.is_(None), o.available_at <= bindparam("now"))
            .order_by(o.available_at)
            .limit(bindparam("limit"))
            # SQLite has a single writer and ignores the clause.
            .with_for_update(skip_locked=True)
        )
        self.handled: Select[Any] = select(p.handler).where(p.message_id == bindparam("id"))
        self.delivered: Update = (
            update(tables.outbox)
            .where(o.id == bindparam("event_id"))
            .values(completed_at=bindparam("now"), last_error=None)
        )
        self.retry_later: Update = (
            update(tables.outbox)
            .where(o.id == bindparam("event_id"))
            .values(
                attempts=o.attempts + 1,
                last_error=bindparam("error"),
                available_at=bindparam("retry_at"),
            )
        )
        prunable = (
            select(o.id)
            .where(o.completed_at < bindparam("before"))
            .order_by(o.completed_at)
            .limit(bindparam("limit"))
        )
        self.prune_ledger: Delete = delete(tables.processed_messages).where(
            p.message_id.in_(prunable.scalar_subquery())
        )
        self.prune_events: Delete = delete(tables.outbox).where(
            o.id.in_(prunable.scalar_subquery())
        )
        self.stats: Select[Any] = select(  # type: ignore[assignment, unused-ignore]
            func.count(),
            func.count().filter(o.attempts >= bindparam("failing_after")),
            func.min(o.created_at),
        ).where(o.completed_at.is_(None))
        # The completed_at index answers this at once, however many rows there are.
        self.oldest_delivered: Select[Any] = select(func.min(o.completed_at))
        self.failing: Select[Any] = (
            select(o.id, o.type, o.attempts, o.last_error)
            .where(o.completed_at.is_(None), o.attempts >= bindparam("failing_after"))
            .order_by(o.attempts.desc(), o.created_at)
            .limit(bindparam("limit"))
        )


VACUUM_TIMEOUT = 600.0  # seconds

_ADDED = ("id", "type", "payload", "sku", "version", "created_at", "available_at")


@cache
def _statements() -> _Statements:
    return _Statements()


@cache
def _record(dialect_name: str) -> Insert:
    return insert_on_conflict(tables.processed_messages, dialect_name).on_conflict_do_nothing()


class SqlOutbox(AbstractOutbox):
    def __init__(self, tx: Transaction) -> None:
        self._tx = tx

    async def add(self, new: list[events.Event]) -> None:
        if not new:
            return
        now = utcnow()
        rows = [
            {
                "new_id": e.id,
                "new_type": type(e).__name__,
                "new_payload": serialise(e),
                "new_sku": getattr(e, "sku", None),
                "new_version": getattr(e, "version", None),
                "new_created_at": now,
                "new_available_at": now,
            }
            for e in new
        ]
        if len(rows) == 1:
            await self._tx.write(_statements().add, rows[0])
        else:
            await self._tx.execute_many(_statements().add, rows)

    async def claim(self, limit: int) -> list[Pending]:
        statements = _statements()
        rows = await self._tx.fetch(statements.claim, {"now": utcnow(), "limit": limit})
        claimed = []
        for event_id, type_name, payload, attempts, earlier in rows:
            handled: frozenset[str] = frozenset()
            if attempts:  # only a failed delivery records handlers
                found = await self._tx.fetch(statements.handled, {"id": event_id})
                handled = frozenset(handler for (handler,) in found)
            claimed.append((Pending(deserialise(type_name, payload), attempts, handled), earlier))
        return in_order(claimed)

    async def delivered(self, event_ids: list[str]) -> None:
        if event_ids:
            now = utcnow()
            await self._tx.execute_many(
                _statements().delivered,
                [{"event_id": event_id, "now": now} for event_id in event_ids],
            )

    async def retry_later(
        self, event_id: str, error: str, retry_at: datetime, finished: list[str]
    ) -> None:
        if finished:
            now = utcnow()
            await self._tx.execute_many(
                _record(self._tx.dialect),
                [{"message_id": event_id, "handler": h, "processed_at": now} for h in finished],
            )
        await self._tx.execute(
            _statements().retry_later,
            {"event_id": event_id, "error": error[:2000], "retry_at": retry_at},
        )

    async def stats(self, failing_after: int) -> OutboxStats:
        statements = _statements()
        [(pending, failing, oldest)] = await self._tx.fetch(
            statements.stats, {"failing_after": failing_after}
        )
        oldest_delivered = await self._tx.scalar(statements.oldest_delivered)
        now = utcnow()
        return OutboxStats(
            pending=pending,
            failing=failing,
            oldest_pending_age=_age(now, oldest),
            oldest_delivered_age=_age(now, oldest_delivered),
        )

    async def failing(self, failing_after: int, limit: int) -> list[FailingEvent]:
        rows = await self._tx.fetch(
            _statements().failing, {"failing_after": failing_after, "limit": limit}
        )
        return [FailingEvent(*row) for row in rows]

    async def prune(self, before: datetime, limit: int) -> int:
        statements = _statements()
        params = {"before": before, "limit": limit}
        await self._tx.execute(statements.prune_ledger, params)
        return await self._tx.execute(statements.prune_events, params)

    async def reclaim_space(self) -> None:
        engine = self._tx.engine
        if engine.dialect.name != "postgresql":
            return  # SQLite reuses freed pages as it goes
        # VACUUM, which cannot run inside a transaction: the tables stay
        # bounded even where autovacuum is off. It takes no lock that writes
        # wait for, so neither DB_TIMEOUT's statement_timeout nor the driver's
        # command timeout bounds it.
        async with borrowed(engine) as driver:
            await driver.execute("SET statement_timeout = 0")
            await driver.execute("VACUUM outbox, processed_messages", timeout=VACUUM_TIMEOUT)
            await driver.execute("RESET statement_timeout")


def _age(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else (now - then).total_seconds()
