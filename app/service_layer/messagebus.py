"""The message bus: runs a command, then every event that follows from it.

Error policy:
- A command's handler raises to the caller. A ConcurrencyError is first
  retried, a bounded number of times with jittered backoff, each attempt on a
  fresh unit of work.
- An event's handlers are isolated from each other and from the caller: each
  gets its own unit of work and the same retries; a failure is logged with
  the event, and the remaining handlers still run.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from app.domain import commands, events
from app.service_layer.unit_of_work import AbstractUnitOfWork, ConcurrencyError

logger = logging.getLogger(__name__)

Message: TypeAlias = commands.Command | events.Event
Handler: TypeAlias = Callable[[Any, AbstractUnitOfWork], Awaitable[None]]
UnitOfWorkFactory: TypeAlias = Callable[[], AbstractUnitOfWork]


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8
    backoff_base: float = 0.005  # seconds; doubles with each attempt, jittered
    backoff_max: float = 0.25

    def retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            retry=retry_if_exception_type(ConcurrencyError),
            stop=stop_after_attempt(self.attempts),
            wait=wait_random_exponential(multiplier=self.backoff_base, max=self.backoff_max),
            reraise=True,
        )


class MessageBus:
    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        command_handlers: Mapping[type[commands.Command], Handler],
        event_handlers: Mapping[type[events.Event], Sequence[Handler]],
        retry: RetryPolicy,
    ) -> None:
        self._uow_factory = uow_factory
        self._command_handlers = command_handlers
        self._event_handlers = event_handlers
        self._retry = retry

    async def handle(self, command: commands.Command) -> None:
        queue: deque[events.Event] = deque()
        queue.extend(await self._run(self._command_handlers[type(command)], command))
        while queue:
            event = queue.popleft()
            for handler in self._event_handlers.get(type(event), ()):
                try:
                    queue.extend(await self._run(handler, event))
                except Exception:
                    logger.exception("handler %s failed on %r", _name(handler), event)

    async def _run(self, handler: Handler, message: Message) -> list[events.Event]:
        async for attempt in self._retry.retrying():
            with attempt:
                uow = self._uow_factory()
                await handler(message, uow)
                return list(uow.collect_new_events())
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover


def _name(handler: Handler) -> str:
    target = getattr(handler, "func", handler)  # see through functools.partial
    return str(getattr(target, "__name__", repr(handler)))
