"""Event delivery: from the outbox to the handlers that run after the commit.

Policy:
- A pass claims the due events, oldest first, and settles each before it
  commits. On PostgreSQL the claim row-locks them for the pass: relays side
  by side never take the same event, and if a process dies mid-pass the
  server ends its transaction and the events are due again at once.
- Every handler of an event that has not yet finished with it runs. When
  all have, the event is delivered. Otherwise the ones that finished are
  recorded under the name they were registered with, the error is kept on
  the event, and it is due again after a backoff that doubles with each
  failure, up to a maximum.
- Delivery is at least once: a process that dies after a handler ran and
  before its pass committed runs that handler again later. Each handler
  makes a repeat recognisable (``line_allocated`` carries the event's id, a
  mail a ``Message-ID`` made from it).
- A commit that stores events wakes delivery in its own process (``wake``);
  otherwise the relay looks every poll interval.
- Delivered events are kept for a retention time, then pruned in chunks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any, TypeAlias

from app import correlation, metrics, tracing
from app.adapters.outbox import AbstractOutbox, Pending
from app.adapters.unavailable import Unavailable
from app.backoff import Backoff
from app.clock import utcnow
from app.domain import events
from app.service_layer.unit_of_work import AbstractUnitOfWork

logger = logging.getLogger(__name__)

EventHandler: TypeAlias = Callable[[Any], Awaitable[None]]
# By event type, each handler under its registered name: the name is what the
# outbox's ledger stores, so it outlives renaming the function.
AfterCommitHandlers: TypeAlias = Mapping[type[events.Event], Mapping[str, EventHandler]]
UnitOfWorkFactory: TypeAlias = Callable[[], AbstractUnitOfWork]


# A failed event is due again a second after its first failure, doubling to 30 s.
REDELIVERY = Backoff(base=1.0, maximum=30.0)


class Delivery:
    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        handlers: AfterCommitHandlers,
        backoff: Backoff = REDELIVERY,
        batch_size: int = 100,
        prune_chunk: int = 5000,
    ) -> None:
        self._uow_factory = uow_factory
        self._handlers = handlers
        self._backoff = backoff
        self.batch_size = batch_size
        self._prune_chunk = prune_chunk
        self._woken = asyncio.Event()

    def committed(self, new: list[events.Event]) -> None:
        """A commit of this process stored ``new``: deliver now, not at the next look."""
        if any(type(event) in self._handlers for event in new):
            self._woken.set()

    def wake(self) -> None:
        self._woken.set()

    async def woken(self, within: float) -> bool:
        """Whether woken within ``within`` seconds (else the time ran out)."""
        try:
            await asyncio.wait_for(self._woken.wait(), within)
        except TimeoutError:
            return False
        finally:
            self._woken.clear()
        return True

    async def deliver_due(self) -> int:
        """Deliver one batch of due events; returns how many were claimed.

        A product's events come in version order; once one of them fails,
        the rest of that product's wait for it (a later pass).
        """
        async with self._uow_factory() as uow:
            due = await uow.outbox.claim(self.batch_size)
            delivered, held_up = [], set()
            for pending in due:
                if pending.product in held_up:
                    continue
                if await self._deliver(pending, uow.outbox):
                    delivered.append(pending.event.id)
                elif pending.product is not None:
                    held_up.add(pending.product)
            await uow.outbox.delivered(delivered)
            await uow.commit()
        return len(due)

    async def _deliver(self, pending: Pending, outbox: AbstractOutbox) -> bool:
        event = pending.event
        finished: list[str] = []
        errors: list[str] = []
        token = correlation.request_id.set(event.request_id)
        try:
            with tracing.continued(event.traceparent):  # in the trace of the work that raised it
                await self._run(pending, finished, errors)
        finally:
            correlation.request_id.reset(token)
        if errors:
            metrics.RELAY_FAILURES.inc()
            retry_at = utcnow() + timedelta(seconds=self._backoff.after(pending.attempts + 1))
            await outbox.retry_later(event.id, "; ".join(errors), retry_at, finished)
        return not errors

    async def _run(self, pending: Pending, finished: list[str], errors: list[str]) -> None:
        """Each handler of the event that has not finished with it yet."""
        event = pending.event
        for name, handler in self._handlers.get(type(event), {}).items():
            if name in pending.handled:
                continue
            try:
                await handler(event)
            except Exception as e:
                _log_failure(e, "handler %s failed on %r", name, event)
                metrics.HANDLER_FAILURES.labels(name).inc()
                errors.append(f"{name}: {type(e).__name__}: {e}")
            else:
                metrics.delivered(name, event)
                finished.append(name)

    async def prune(self, retention: timedelta) -> int:
        """Forget the events delivered more than ``retention`` ago, a chunk per transaction."""
        before = utcnow() - retention
        removed = 0
        while True:
            async with self._uow_factory() as uow:
                count = await uow.outbox.prune(before, self._prune_chunk)
                await uow.commit()
            removed += count
            if count < self._prune_chunk:
                break
            await asyncio.sleep(0)  # deliveries and requests go between chunks
        if removed:
            async with self._uow_factory() as uow:
                await uow.outbox.reclaim_space()
        return removed


def _log_failure(exc: Exception, message: str, *args: object) -> None:
    """With the trace; but not an outage, which is no bug, and which app.outages tells of."""
    if not isinstance(exc, Unavailable):
        logger.exception(message, *args)
