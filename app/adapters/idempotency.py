"""Idempotency keys: a write's key, what it was asked, and the answer it got.

A row is a reservation until its answer is recorded (``status`` NULL). The
primary key makes a reservation exclusive across processes: of two requests
inserting the same key, one inserts, the other finds the row. Times are
naive UTC.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

from sqlalchemy import Insert, and_, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters import orm
from app.adapters.database import insert_on_conflict
from app.clock import utcnow

# A reservation older than this is taken to belong to a process that died
# before recording its answer, and the next request with its key runs again.
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


@cache
def _insert(dialect_name: str) -> Insert:
    statement: Insert = insert_on_conflict(
        orm.idempotency_keys, dialect_name
    ).on_conflict_do_nothing()
    return statement


class SqlAlchemyIdempotencyKeys(AbstractIdempotencyKeys):
    """On the write engine; each call is one short transaction of its own."""

    def __init__(
        self,
        engine: AsyncEngine,
        ttl: timedelta,
        prune_every: timedelta = PRUNE_EVERY,
        stale_after: timedelta = STALE_AFTER,
    ) -> None:
        self._engine = engine
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
        k = orm.idempotency_keys.c
        values = {
            "idempotency_key": key,
            "request": request,
            "fingerprint": fingerprint,
            "created_at": now,
            "expires_at": now + self._ttl,
        }
        async with self._engine.begin() as conn:
            inserted = await conn.execute(_insert(conn.dialect.name), values)
            if inserted.rowcount:
                return Reserved(now)
            # An expired key is new again; a reservation nobody answered is stale.
            # The WHERE is checked again under the row's lock, so only one
            # request takes a row over.
            taken = await conn.execute(
                update(orm.idempotency_keys)
                .where(
                    k.idempotency_key == key,
                    or_(
                        k.expires_at <= now,
                        and_(k.status.is_(None), k.created_at <= now - self._stale_after),
                    ),
                )
                .values(status=None, body=None, location=None, **values)
            )
            if taken.rowcount:
                return Reserved(now)
            row = (
                await conn.execute(
                    select(k.request, k.fingerprint, k.status, k.body, k.location).where(
                        k.idempotency_key == key
                    )
                )
            ).one_or_none()
        if row is None:
            return None
        answer = None if row.status is None else Answer(row.status, row.body, row.location)
        return Existing(row.request, row.fingerprint, answer)

    async def record(self, key: str, reservation: Reserved, answer: Answer) -> None:
        k = orm.idempotency_keys.c
        async with self._engine.begin() as conn:
            await conn.execute(
                update(orm.idempotency_keys)
                .where(k.idempotency_key == key, k.created_at == reservation.at)
                .values(status=answer.status, body=answer.body, location=answer.location)
            )

    async def release(self, key: str, reservation: Reserved) -> None:
        k = orm.idempotency_keys.c
        async with self._engine.begin() as conn:
            await conn.execute(
                delete(orm.idempotency_keys).where(
                    k.idempotency_key == key, k.created_at == reservation.at, k.status.is_(None)
                )
            )

    async def prune(self, now: datetime) -> int:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                delete(orm.idempotency_keys).where(orm.idempotency_keys.c.expires_at <= now)
            )
        return result.rowcount
