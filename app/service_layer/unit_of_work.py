"""The unit of work: one atomic change, and everything that follows from it in the database.

A unit of work is used for exactly one handled message: the message bus
builds a fresh one from a factory for every message, and for every retry.

Its commit is one transaction. It runs the *inline* handlers of the events
the change raised (the read models, the reallocation of a deallocated line:
whatever only writes this database), then those of the events they raise in
turn, and stores in the outbox every event that has handlers to run after
the commit (Redis, mail). A read that follows the commit therefore sees the
change and all its projections, and nothing that must still happen can be
lost: it is in the outbox.

A group of commands for one aggregate may share a unit of work
(app.service_layer.group_commit): each command's handler gets a *share* of
it, whose commit runs the inline handlers of what that command changed and
keeps it for the transaction's commit, which the group makes once all its
commands are handled.
"""

from __future__ import annotations

import abc
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from dataclasses import replace
from types import TracebackType
from typing import Any, Self, TypeAlias

from sqlalchemy.ext.asyncio import AsyncEngine

from app import correlation, tracing
from app.adapters.database_errors import (
    ConcurrencyError,
    DatabaseUnavailable,
    is_retryable,
    is_unavailable,
    unavailable_reason,
)
from app.adapters.holds import AbstractHolds, SqlHolds
from app.adapters.outbox import AbstractOutbox, SqlOutbox
from app.adapters.projections import AbstractReadModel, SqlReadModel
from app.adapters.repository import AbstractRepository, SqlRepository
from app.adapters.transactions import transaction
from app.domain import events, model

InlineHandler: TypeAlias = Callable[[Any, "AbstractUnitOfWork"], Awaitable[None]]
# By event type, each handler under the name it was registered with.
InlineHandlers: TypeAlias = Mapping[type[events.Event], Mapping[str, InlineHandler]]


class AbstractUnitOfWork(abc.ABC):
    products: AbstractRepository
    holds: AbstractHolds
    read_model: AbstractReadModel
    outbox: AbstractOutbox

    def __init__(
        self,
        inline: InlineHandlers | None = None,
        after_commit: Collection[type[events.Event]] = (),
    ) -> None:
        self._inline = inline or {}
        self._after_commit = after_commit  # event types the outbox keeps
        self._raised: list[events.Event] = []  # followed through, not yet committed
        self.committed_events: list[events.Event] = []

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
        await self.follow_through()
        await self.products.save()
        await self.holds.save()
        await self.read_model.flush()
        raised, self._raised = self._raised, []
        await self.outbox.add([e for e in raised if type(e) in self._after_commit])
        await self._commit()
        self.committed_events.extend(raised)

    async def follow_through(self) -> list[events.Event]:
        """Run the inline handlers of the events raised since, and of those they raise in turn.

        Returns those events, in order; the commit stores and reports them.
        """
        raised: list[events.Event] = []
        queue = deque(self._new_events())
        while queue:
            event = queue.popleft()
            raised.append(event)
            for handler in self._inline.get(type(event), {}).values():
                await handler(event, self)
            queue.extend(self._new_events())
        self._raised.extend(raised)
        return raised

    def share(self) -> Share:
        """A part of this unit of work for one command of a group that shares it."""
        return Share(self)

    def _new_events(self) -> Iterator[events.Event]:
        """Events the products raised since last asked, with the request's id and trace."""
        request_id = correlation.request_id.get()
        key = correlation.idempotency_key.get()
        traceparent = tracing.traceparent()
        aggregates: list[model.Product | model.Hold] = [*self.products.seen, *self.holds.seen]
        for aggregate in aggregates:
            while aggregate.events:
                event = aggregate.events.pop(0)
                if request_id and not event.request_id:
                    event = replace(event, request_id=request_id)
                if key and not event.idempotency_key:
                    event = replace(event, idempotency_key=key)
                if traceparent and not event.traceparent:
                    event = replace(event, traceparent=traceparent)
                yield event

    @abc.abstractmethod
    async def _commit(self) -> None: ...

    @abc.abstractmethod
    async def rollback(self) -> None: ...


class Share(AbstractUnitOfWork):
    """One command's part of a unit of work that a group of commands shares.

    Its commit is the command's: it runs the inline handlers of what the
    command changed, in the shared transaction, and leaves the rest to the
    whole's commit. A command that leaves without committing is rolled back
    only if it changed nothing (a refusal: the domain refuses before it
    changes anything); ``changed_uncommitted`` says when it did, and the
    group must not commit that.
    """

    def __init__(self, whole: AbstractUnitOfWork) -> None:
        super().__init__()
        self._whole = whole
        self.products = whole.products
        self.holds = whole.holds
        self.read_model = whole.read_model
        self.outbox = whole.outbox
        self.committed = False
        self.changed_uncommitted = False

    async def commit(self) -> None:
        self.committed_events = await self._whole.follow_through()
        self.committed = True

    async def _commit(self) -> None:  # pragma: no cover - commit() is the share's own
        raise NotImplementedError

    async def rollback(self) -> None:
        if not self.committed and any(p.events for p in self.products.seen):
            self.changed_uncommitted = True


class SqlUnitOfWork(AbstractUnitOfWork):
    """Single use: one transaction, closed on leaving."""

    def __init__(
        self,
        engine: AsyncEngine,
        inline: InlineHandlers | None = None,
        after_commit: Collection[type[events.Event]] = (),
    ) -> None:
        super().__init__(inline, after_commit)
        # The first statement takes a connection and begins.
        self.tx = transaction(engine)
        self.products = SqlRepository(self.tx)
        self.holds = SqlHolds(self.tx)
        self.read_model = SqlReadModel(self.tx)
        self.outbox = SqlOutbox(self.tx)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        failure = exc
        try:
            await self.tx.close()  # rolls back what was not committed
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
        await self.tx.commit()

    async def rollback(self) -> None:
        await self.tx.close()
