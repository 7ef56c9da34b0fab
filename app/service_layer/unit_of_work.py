"""The unit of work: one atomic change, the events it raised, and their outbox rows.

A unit of work is used for exactly one handled message: the message bus
builds a fresh one from a factory for every message, and for every retry.
Its commit stores the events the change raised in the outbox, in the same
transaction; when it runs an event handler, the commit also records that
handler as done with that event.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from types import TracebackType
from typing import Self

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import correlation
from app.adapters.database import is_retryable, is_unavailable, unavailable_reason
from app.adapters.outbox import AbstractOutbox, SqlAlchemyOutbox, utcnow
from app.adapters.projections import AbstractReadModel, SqlAlchemyReadModel
from app.adapters.repository import AbstractRepository, SqlAlchemyRepository
from app.domain import events
from app.faults import Faults


class ConcurrencyError(Exception):
    """A concurrent write got in the way; running the message again may succeed."""


class AlreadyHandled(Exception):
    """Another delivery of this event already ran this handler; this one is void."""


class DatabaseUnavailable(Exception):
    """The database cannot be reached now; nothing was committed, or it is unknown whether.

    Not a collision: running the message again at once would fail the same
    way, so it is not retried here; the caller may try again shortly.
    """


class AbstractUnitOfWork(abc.ABC):
    products: AbstractRepository
    read_model: AbstractReadModel
    outbox: AbstractOutbox
    faults: Faults
    lease: timedelta

    def __init__(self) -> None:
        # (event id, handler name) when this unit of work runs an event handler
        self.handling: tuple[str, str] | None = None
        self.committed = False
        self._committed_events: list[events.Event] = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.rollback()

    async def commit(self) -> None:
        request_id = correlation.request_id.get()
        new = [
            e if e.request_id or not request_id else replace(e, request_id=request_id)
            for product in self.products.seen
            for e in product.events
        ]
        for product in self.products.seen:
            product.events.clear()
        if self.handling is not None:
            if not await self.outbox.record_handled(*self.handling):
                raise AlreadyHandled(self.handling)
            self.faults.check(f"commit:{self.handling[1]}")
        # Until the lease runs out, the events are this process's to dispatch.
        await self.outbox.add(new, available_at=utcnow() + self.lease)
        await self._commit()
        self.committed = True
        self._committed_events.extend(new)

    def collect_new_events(self) -> Iterator[events.Event]:
        """The events of what this unit of work committed, each given out once."""
        while self._committed_events:
            yield self._committed_events.pop(0)

    @abc.abstractmethod
    async def _commit(self) -> None: ...

    @abc.abstractmethod
    async def rollback(self) -> None: ...


class SqlAlchemyUnitOfWork(AbstractUnitOfWork):
    """Single use: one session, one transaction, closed on leaving."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        faults: Faults | None = None,
        lease: timedelta = timedelta(seconds=30),
    ) -> None:
        super().__init__()
        # Creating a session opens no connection; the first query does.
        self.session = session_factory()
        self.products = SqlAlchemyRepository(self.session)
        self.read_model = SqlAlchemyReadModel(self.session)
        self.outbox = SqlAlchemyOutbox(self.session)
        self.faults = faults or Faults()
        self.lease = lease

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        failure = exc
        try:
            try:
                await super().__aexit__(exc_type, exc, tb)
            finally:
                await self.session.close()
        except Exception as e:
            # Rolling back on a connection the server dropped fails too.
            if not is_unavailable(e):
                raise
            failure = e
        if failure is None:
            return
        if is_unavailable(failure):
            raise DatabaseUnavailable(unavailable_reason(failure)) from failure
        if is_retryable(failure):
            raise ConcurrencyError(str(failure)) from failure

    async def _commit(self) -> None:
        await self.session.commit()

    async def rollback(self) -> None:
        await self.session.rollback()
