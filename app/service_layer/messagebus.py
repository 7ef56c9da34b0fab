"""The message bus: runs a command, then every event that follows from it.

Error policy:
- A command's handler raises to the caller. A ConcurrencyError is first
  retried, a bounded number of times with jittered backoff, each attempt on a
  fresh unit of work.
- Events are already in the outbox when the bus sees them (the command's
  commit put them there). Each handler of an event runs in its own unit of
  work, with the same retries, and its commit records it as done with that
  event. A failing handler is logged and the others still run; the event
  stays in the outbox, marked with the error, for the relay to deliver again
  later, to the handlers that have not finished.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeAlias

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from app import correlation, metrics
from app.adapters.outbox import utcnow
from app.domain import commands, events
from app.faults import Faults
from app.service_layer.unit_of_work import (
    AbstractUnitOfWork,
    AlreadyHandled,
    ConcurrencyError,
    DatabaseUnavailable,
)

logger = logging.getLogger(__name__)

Message: TypeAlias = commands.Command | events.Event
Handler: TypeAlias = Callable[[Any, AbstractUnitOfWork], Awaitable[None]]
UnitOfWorkFactory: TypeAlias = Callable[[], AbstractUnitOfWork]


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8
    backoff_base: float = 0.005  # seconds; doubles with each attempt, jittered
    backoff_max: float = 0.25
    # delivering an event again after a failure: doubles up to the maximum
    redelivery_base: float = 1.0
    redelivery_max: float = 30.0

    def retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            retry=retry_if_exception_type(ConcurrencyError),
            stop=stop_after_attempt(self.attempts),
            wait=wait_random_exponential(multiplier=self.backoff_base, max=self.backoff_max),
            reraise=True,
        )

    def redelivery_delay(self, attempts: int) -> timedelta:
        seconds = min(self.redelivery_base * 2 ** max(attempts - 1, 0), self.redelivery_max)
        return timedelta(seconds=seconds)


def _log_failure(exc: Exception, message: str, *args: object) -> None:
    """With the trace; but a database outage, which is no bug, in one line."""
    if isinstance(exc, DatabaseUnavailable):
        logger.warning(message + ": %s", *args, exc)
    else:
        logger.exception(message, *args)


def handler_name(handler: Handler) -> str:
    target = getattr(handler, "func", handler)  # see through functools.partial
    return str(getattr(target, "__name__", repr(handler)))


class MessageBus:
    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        command_handlers: Mapping[type[commands.Command], Handler],
        event_handlers: Mapping[type[events.Event], Sequence[Handler]],
        retry: RetryPolicy,
        faults: Faults,
        lease: timedelta = timedelta(seconds=30),
    ) -> None:
        self._uow_factory = uow_factory
        self._command_handlers = command_handlers
        self._event_handlers = event_handlers
        self._retry = retry
        self._faults = faults
        self._lease = lease

    def deadline(self) -> float | None:
        """When events leased now must be handed back: half the lease from now."""
        half = self._lease.total_seconds() / 2
        return time.monotonic() + half if half else None

    async def handle(self, command: commands.Command) -> None:
        new = await self._run(self._command_handlers[type(command)], command) or []
        deadline = self.deadline()
        self._faults.check("after_commit")
        await self._dispatch(new, deadline)

    async def redeliver(
        self,
        event: events.Event,
        attempts: int,
        handled: frozenset[str],
        deadline: float | None = None,
    ) -> bool:
        """Deliver an event from the outbox to the handlers not in ``handled``.

        Returns whether all of them succeeded (the events they raise in turn
        are delivered too, and settle on their own).
        """
        return await self._dispatch([event], deadline, attempts=attempts, handled=handled)

    async def _dispatch(
        self,
        new: Iterable[events.Event],
        deadline: float | None,
        attempts: int = 0,
        handled: frozenset[str] = frozenset(),
    ) -> bool:
        """Deliver ``new`` and what follows; returns whether ``new`` was delivered whole.

        Past ``deadline`` the events still queued go back to the outbox, due
        at once, rather than risk a relay taking them while this goes on.
        """
        queue = deque((event, attempts, handled, True) for event in new)
        delivered = True
        while queue:
            if deadline is not None and time.monotonic() > deadline:
                await self._hand_back([item[0] for item in queue])
                return delivered and not any(first for *_, first in queue)
            event, attempts, handled, first = queue.popleft()
            errors: list[str] = []
            unrecorded: list[str] = []  # done, with nothing written to record it
            # Whatever handles the event, and the events it raises, log under
            # the id of the request that caused it.
            token = correlation.request_id.set(event.request_id)
            try:
                for handler in self._event_handlers.get(type(event), ()):
                    name = handler_name(handler)
                    if name in handled:
                        continue
                    try:
                        more = await self._run(handler, event, handling=(event.id, name))
                    except Exception as e:
                        _log_failure(e, "handler %s failed on %r", name, event)
                        metrics.HANDLER_FAILURES.labels(name).inc()
                        errors.append(f"{name}: {type(e).__name__}: {e}")
                    else:
                        metrics.handled(name, event)
                        if more is None:
                            unrecorded.append(name)
                        else:
                            queue.extend((e, 0, frozenset(), False) for e in more)
                await self._settle(event, attempts, errors, unrecorded)
            finally:
                correlation.request_id.reset(token)
            if first and errors:
                delivered = False
        return delivered

    async def _run(
        self, handler: Handler, message: Message, handling: tuple[str, str] | None = None
    ) -> list[events.Event] | None:
        """Run a handler on a fresh unit of work; return the events it committed.

        None means it committed nothing, so nothing records it as done yet.
        """
        async for attempt in self._retry.retrying():
            with attempt:
                uow = self._uow_factory()
                uow.handling = handling
                try:
                    await handler(message, uow)
                except AlreadyHandled:
                    return []
                if not uow.committed:
                    return None
                new = list(uow.collect_new_events())
                metrics.committed(new)
                return new
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _hand_back(self, queued: list[events.Event]) -> None:
        try:
            async with self._uow_factory() as uow:
                await uow.outbox.release([event.id for event in queued])
                await uow.commit()
        except Exception as e:
            _log_failure(e, "could not hand back %d events; their lease will", len(queued))

    async def _settle(
        self, event: events.Event, attempts: int, errors: list[str], unrecorded: list[str]
    ) -> None:
        """Mark the event delivered, or due again after a backoff.

        In the second case the handlers that succeeded without writing
        anything are recorded now, so that redelivery does not run them again.
        """
        try:
            async for attempt in self._retry.retrying():
                with attempt:
                    async with self._uow_factory() as uow:
                        if errors:
                            for name in unrecorded:
                                await uow.outbox.record_handled(event.id, name)
                            delay = self._retry.redelivery_delay(attempts + 1)
                            await uow.outbox.failed(event.id, "; ".join(errors), utcnow() + delay)
                        else:
                            await uow.outbox.complete(event.id)
                        await uow.commit()
        except Exception as e:
            # The event's lease runs out and the relay delivers it again; its
            # finished handlers are recorded, so only the rest run.
            _log_failure(e, "could not record the delivery of %r", event)
