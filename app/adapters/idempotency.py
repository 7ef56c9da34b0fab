"""Idempotency keys: a write's key, what it was asked, and the answer it got.

A row is a reservation until its answer is recorded (``status`` NULL). The
primary key makes a reservation exclusive across processes: of two requests
inserting the same key, one inserts, the other finds the row. The row names
the process that reserved it (app.adapters.liveness): a reservation whose
process died is taken over at once, by the next request with its key. Times
are naive UTC.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import and_, bindparam, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters import tables
from app.adapters.liveness import Liveness
from app.adapters.tables import insert_on_conflict
from app.adapters.transactions import committed
from app.clock import utcnow

# A reservation older than this is taken to belong to a process that died
# before recording its answer, and the next request with its key runs again:
# for those whose process cannot be asked (app.adapters.liveness).
STALE_AFTER = timedelta(seconds=60)
PRUNE_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class Answer:
    status: int
    body: str
    location: str | None


@dataclass(frozen=True)
class Reserved:
    """The key is this request's to answer; ``at`` tells it apart from a later takeover."""

    at: datetime


@dataclass(frozen=True)
class Existing:
    """The key belongs to an earlier request; ``answer`` is None while it is in progress."""

    request: str
    fingerprint: str
    answer: Answer | None


class AbstractIdempotencyKeys(abc.ABC):
    @abc.abstractmethod
    async def reserve(self, key: str, request: str, fingerprint: str) -> Reserved | Existing | None:
        """Take ``key`` for this request, or say who has it; None if it just came free."""

    @abc.abstractmethod
    async def record(self, key: str, reservation: Reserved, answer: Answer) -> None:
        """Keep the answer for repeats; a no-op if the reservation was taken over."""

    @abc.abstractmethod
    async def release(self, key: str, reservation: Reserved) -> None:
        """Forget the reservation, so that a repeat runs afresh."""

    @abc.abstractmethod
    async def prune(self, now: datetime) -> int:
        """Forget expired keys."""


_NEW = ("idempotency_key", "request", "fingerprint", "owner", "created_at", "expires_at")


class _Statements:
    """Built once: a transaction compiles each statement once per process."""

    def __init__(self, dialect_name: str) -> None:
        k = tables.idempotency_keys.c
        # (Parameters of INSERT and UPDATE may not be named as the table's columns.)
        new: dict[str, Any] = {name: bindparam(f"new_{name}") for name in _NEW}
        self.insert = (
            insert_on_conflict(tables.idempotency_keys, dialect_name)
            .values(new)
            .on_conflict_do_nothing()
        )
        # An expired key is new again; a reservation nobody answered is stale.
        # The WHERE is checked again under the row's lock, so only one
        # request takes a row over.
        self.take_over = (
            update(tables.idempotency_keys)
            .where(
                k.idempotency_key == bindparam("key"),
                or_(
                    k.expires_at <= bindparam("now"),
                    and_(k.status.is_(None), k.created_at <= bindparam("stale_before")),
                ),
            )
            .values(status=None, body=None, location=None, **new)
        )
        self.find = select(k.request, k.fingerprint, k.status, k.body, k.location, k.owner).where(
            k.idempotency_key == bindparam("key")
        )
        self.take_from_the_dead = (
            update(tables.idempotency_keys)
            .where(
                k.idempotency_key == bindparam("key"),
                k.status.is_(None),
                k.owner == bindparam("dead"),
            )
            .values(**new)
        )
        self.record = (
            update(tables.idempotency_keys)
            .where(k.idempotency_key == bindparam("key"), k.created_at == bindparam("at"))
            .values(
                status=bindparam("new_status"),
                body=bindparam("new_body"),
                location=bindparam("new_location"),
            )
        )
        self.release = delete(tables.idempotency_keys).where(
            k.idempotency_key == bindparam("key"),
            k.created_at == bindparam("at"),
            k.status.is_(None),
        )
        self.prune = delete(tables.idempotency_keys).where(k.expires_at <= bindparam("now"))


@cache
def _statements(dialect_name: str) -> _Statements:
    return _Statements(dialect_name)


class SqlIdempotencyKeys(AbstractIdempotencyKeys):
    """On the write engine; each call is one short transaction of its own."""

    def __init__(
        self,
        engine: AsyncEngine,
        liveness: Liveness,
        ttl: timedelta,
        prune_every: timedelta = PRUNE_EVERY,
        stale_after: timedelta = STALE_AFTER,
    ) -> None:
        self._engine = engine
        self._statements = _statements(engine.dialect.name)
        self._liveness = liveness
        self._ttl = ttl
        self._prune_every = prune_every
        self._stale_after = stale_after
        self._next_prune = utcnow()

    async def reserve(self, key: str, request: str, fingerprint: str) -> Reserved | Existing | None:
        now = utcnow()
        if now >= self._next_prune:
            # Pruned where keys are written: no keyed writes, no rows to prune.
            self._next_prune = now + self._prune_every
            await self.prune(now)
        statements = self._statements
        new = {
            "new_idempotency_key": key,
            "new_request": request,
            "new_fingerprint": fingerprint,
            "new_owner": self._liveness.me,
            "new_created_at": now,
            "new_expires_at": now + self._ttl,
        }
        async with committed(self._engine) as tx:
            if await tx.execute(statements.insert, new):
                return Reserved(now)
            stale_before = now - self._stale_after
            taken = {"key": key, "now": now, "stale_before": stale_before, **new}
            if await tx.execute(statements.take_over, taken):
                return Reserved(now)
            rows = await tx.fetch(statements.find, {"key": key})
            if not rows:
                return None
            found_request, found_fingerprint, status, body, location, owner = rows[0]
            if (
                status is None
                and (found_request, found_fingerprint) == (request, fingerprint)
                and owner is not None
                and not await self._liveness.alive(owner)
            ):
                # Its process died before answering: the answer is this request's to give.
                dead = {"key": key, "dead": owner, **new}
                if await tx.execute(statements.take_from_the_dead, dead):
                    return Reserved(now)
        answer = None if status is None else Answer(status, body, location)
        return Existing(found_request, found_fingerprint, answer)

    async def record(self, key: str, reservation: Reserved, answer: Answer) -> None:
        recorded = {
            "key": key,
            "at": reservation.at,
            "new_status": answer.status,
            "new_body": answer.body,
            "new_location": answer.location,
        }
        async with committed(self._engine) as tx:
            await tx.execute(self._statements.record, recorded)

    async def release(self, key: str, reservation: Reserved) -> None:
        async with committed(self._engine) as tx:
            await tx.execute(self._statements.release, {"key": key, "at": reservation.at})

    async def prune(self, now: datetime) -> int:
        async with committed(self._engine) as tx:
            return await tx.execute(self._statements.prune, {"now": now})
