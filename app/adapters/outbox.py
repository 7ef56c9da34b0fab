"""The outbox: events stored with the change that raised them, until delivered.

It also keeps the ledger of which handler has processed which event, so that
a redelivered event runs only the handlers that have not finished.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import Insert, bindparam, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.adapters import orm
from app.domain import events

EVENT_TYPES: dict[str, type[events.Event]] = {
    cls.__name__: cls for cls in events.Event.__subclasses__()
}
_ADAPTERS: dict[type[events.Event], TypeAdapter[Any]] = {
    cls: TypeAdapter(cls) for cls in EVENT_TYPES.values()
}


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def serialise(event: events.Event) -> dict[str, Any]:
    payload: dict[str, Any] = _ADAPTERS[type(event)].dump_python(event, mode="json")
    return payload


def deserialise(type_name: str, payload: dict[str, Any]) -> events.Event:
    cls = EVENT_TYPES[type_name]
    event: events.Event = _ADAPTERS[cls].validate_python(payload)
    return event


@dataclass(frozen=True)
class Pending:
    """An event claimed for redelivery, and the handlers that already processed it."""

    event: events.Event
    attempts: int
    handled: frozenset[str]


@dataclass(frozen=True)
class OutboxStats:
    pending: int
    failing: int
    oldest_pending_age: float | None  # seconds


@dataclass(frozen=True)
class FailingEvent:
    id: str
    type: str
    attempts: int
    last_error: str | None


class AbstractOutbox(abc.ABC):
    @abc.abstractmethod
    async def add(self, new: list[events.Event], available_at: datetime) -> None:
        """Store events in the current transaction."""

    @abc.abstractmethod
    async def record_handled(self, event_id: str, handler: str) -> bool:
        """Record that ``handler`` processed the event; False if it already had."""

    @abc.abstractmethod
    async def claim(self, limit: int, lease: timedelta) -> list[Pending]:
        """Take up to ``limit`` undelivered events that nobody holds, for ``lease``."""

    @abc.abstractmethod
    async def release(self, event_ids: list[str]) -> None:
        """Make claimed events due again at once."""

    @abc.abstractmethod
    async def complete(self, event_id: str) -> None: ...

    @abc.abstractmethod
    async def failed(self, event_id: str, error: str, retry_at: datetime) -> None: ...

    @abc.abstractmethod
    async def stats(self, failing_after: int) -> OutboxStats: ...

    @abc.abstractmethod
    async def failing(self, failing_after: int, limit: int) -> list[FailingEvent]:
        """The undelivered events tried most often, with their last error."""

    @abc.abstractmethod
    async def prune(self, before: datetime) -> int:
        """Forget delivered events, and the ledger of events no longer kept."""


_COMPLETE = (
    update(orm.outbox)
    .where(orm.outbox.c.id == bindparam("event_id"))
    .values(completed_at=bindparam("now"), last_error=None)
)


@cache
def _record(dialect_name: str) -> Insert:
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    record: Insert = dialect.insert(orm.processed_messages).on_conflict_do_nothing()
    return record


class SqlAlchemyOutbox(AbstractOutbox):
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, new: list[events.Event], available_at: datetime) -> None:
        if not new:
            return
        now = utcnow()
        rows = [
            {
                "id": e.id,
                "type": type(e).__name__,
                "payload": serialise(e),
                "sku": getattr(e, "sku", None),
                "version": getattr(e, "version", None),
                "created_at": now,
                "available_at": available_at,
            }
            for e in new
        ]
        await self.session.execute(insert(orm.outbox), rows)

    async def record_handled(self, event_id: str, handler: str) -> bool:
        result = await self.session.execute(
            _record(self.session.get_bind().dialect.name),
            {"message_id": event_id, "handler": handler, "processed_at": utcnow()},
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def claim(self, limit: int, lease: timedelta) -> list[Pending]:
        o = orm.outbox.c
        now = utcnow()
        # SKIP LOCKED lets several relays claim side by side on PostgreSQL;
        # SQLite has a single writer and ignores the clause.
        due = (
            select(o.id)
            .where(o.completed_at.is_(None), o.available_at <= now)
            .order_by(o.available_at, o.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        ids = list(await self.session.scalars(due))
        if not ids:
            return []
        await self.session.execute(
            update(orm.outbox).where(o.id.in_(ids)).values(available_at=now + lease)
        )
        rows = (
            await self.session.execute(
                select(o.id, o.type, o.payload, o.attempts)
                .where(o.id.in_(ids))
                .order_by(o.created_at)
            )
        ).all()
        p = orm.processed_messages.c
        handled: dict[str, set[str]] = {}
        for message_id, handler in await self.session.execute(
            select(p.message_id, p.handler).where(p.message_id.in_(ids))
        ):
            handled.setdefault(message_id, set()).add(handler)
        return [
            Pending(
                event=deserialise(r.type, r.payload),
                attempts=r.attempts,
                handled=frozenset(handled.get(r.id, ())),
            )
            for r in rows
        ]

    async def release(self, event_ids: list[str]) -> None:
        o = orm.outbox.c
        await self.session.execute(
            update(orm.outbox)
            .where(o.id.in_(event_ids), o.completed_at.is_(None))
            .values(available_at=utcnow())
        )

    async def complete(self, event_id: str) -> None:
        await self.session.execute(_COMPLETE, {"event_id": event_id, "now": utcnow()})

    async def failed(self, event_id: str, error: str, retry_at: datetime) -> None:
        o = orm.outbox.c
        await self.session.execute(
            update(orm.outbox)
            .where(o.id == event_id, o.completed_at.is_(None))
            .values(attempts=o.attempts + 1, last_error=error[:2000], available_at=retry_at)
        )

    async def stats(self, failing_after: int) -> OutboxStats:
        o = orm.outbox.c
        row = (
            await self.session.execute(
                select(
                    func.count(),
                    func.count().filter(o.attempts >= failing_after),
                    func.min(o.created_at),
                ).where(o.completed_at.is_(None))
            )
        ).one()
        pending, failing, oldest = row
        age = (utcnow() - oldest).total_seconds() if oldest is not None else None
        return OutboxStats(pending=pending, failing=failing, oldest_pending_age=age)

    async def failing(self, failing_after: int, limit: int) -> list[FailingEvent]:
        o = orm.outbox.c
        rows = await self.session.execute(
            select(o.id, o.type, o.attempts, o.last_error)
            .where(o.completed_at.is_(None), o.attempts >= failing_after)
            .order_by(o.attempts.desc(), o.created_at)
            .limit(limit)
        )
        return [FailingEvent(r.id, r.type, r.attempts, r.last_error) for r in rows]

    async def prune(self, before: datetime) -> int:
        o, p = orm.outbox.c, orm.processed_messages.c
        result = await self.session.execute(
            delete(orm.outbox).where(o.completed_at.is_not(None), o.completed_at < before)
        )
        await self.session.execute(
            delete(orm.processed_messages).where(
                p.processed_at < before, p.message_id.not_in(select(o.id))
            )
        )
        return int(result.rowcount)  # type: ignore[attr-defined]
