"""The message bus: runs a command, with what follows from it.

A command's handler runs on a fresh unit of work, whose commit also runs the
inline handlers of the events it raised and stores the rest in the outbox
(see app.service_layer.unit_of_work). The bus then wakes delivery, which
runs the after-commit handlers (Redis, mail) in the background: nothing
outside the database holds up the caller.

Error policy: a command's handler raises to the caller. A ConcurrencyError
is first retried, a bounded number of times with jittered backoff, each
attempt on a fresh unit of work.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from app import metrics
from app.domain import commands
from app.service_layer.delivery import Delivery, UnitOfWorkFactory
from app.service_layer.unit_of_work import AbstractUnitOfWork, ConcurrencyError

CommandHandler: TypeAlias = Callable[[Any, AbstractUnitOfWork], Awaitable[None]]


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
        command_handlers: Mapping[type[commands.Command], CommandHandler],
        retry: RetryPolicy,
        delivery: Delivery,
    ) -> None:
        self._uow_factory = uow_factory
        self._command_handlers = command_handlers
        self._retry = retry
        self._delivery = delivery

    async def handle(self, command: commands.Command) -> None:
        handler = self._command_handlers[type(command)]
        async for attempt in self._retry.retrying():
            with attempt:
                uow = self._uow_factory()
                await handler(command, uow)
        metrics.committed(uow.committed_events)
        self._delivery.committed(uow.committed_events)
