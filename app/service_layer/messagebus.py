"""The message bus: runs a command, with what follows from it.

A command's handler runs on a fresh unit of work, whose commit also runs the
inline handlers of the events it raised and stores the rest in the outbox
(see app.service_layer.unit_of_work). The bus then wakes delivery, which
runs the after-commit handlers (Redis, mail) in the background: nothing
outside the database holds up the caller.

Commands of a grouped type (``Allocate``) go through group commit
(app.service_layer.group_commit): those for one aggregate that arrive while
a transaction on it is in flight share the next one. Each is handled by its
own handler, in its turn, on a share of the group's unit of work.

Error policy: a command's handler raises to the caller. A ConcurrencyError
is first retried, a bounded number of times with jittered backoff, each
attempt on a fresh unit of work; for a group, the whole group is. In a
group, a command's refusal is its own: the others go on. A database error
fails the whole group's transaction, and every command of it gets that
error; nothing of the group is committed. A command that raised after it
changed the aggregate (no refusal does) cannot be taken out of the group's
transaction: the group is then handled again, one command per transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from app import correlation, metrics, tracing
from app.adapters.database_errors import ConcurrencyError, is_database_error
from app.backoff import Backoff
from app.domain import commands, events
from app.service_layer.delivery import Delivery, UnitOfWorkFactory
from app.service_layer.group_commit import GroupCommit, Outcome
from app.service_layer.unit_of_work import AbstractUnitOfWork

CommandHandler: TypeAlias = Callable[[Any, AbstractUnitOfWork], Awaitable[None]]


@dataclass(frozen=True)
class Grouping:
    """How commands of one type are grouped: by aggregate, and what a group reads first."""

    key: Callable[[Any], Hashable]
    # Reads what the group's handlers will ask for, in one go, on the group's unit of work.
    load: Callable[[Sequence[Any], AbstractUnitOfWork], Awaitable[None]]


# Up to 5 ms after the first collision, doubling to 250 ms, jittered.
COLLIDED = Backoff(base=0.005, maximum=0.25, jitter=True)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8
    backoff: Backoff = COLLIDED

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` collisions in a row."""
        return self.backoff.after(failures)


@dataclass(frozen=True)
class Member:
    command: commands.Command
    # The caller's request id and trace: the events its command raises carry
    # them, though the group's transaction runs in another caller's task.
    request_id: str | None
    traceparent: str | None
    idempotency_key: str | None = None

    @contextlib.contextmanager
    def acting(self) -> Iterator[None]:
        """Work done within is this member's caller's: its request id, key and trace."""
        token = correlation.request_id.set(self.request_id)
        key = correlation.idempotency_key.set(self.idempotency_key)
        try:
            with tracing.continued(self.traceparent):
                yield
        finally:
            correlation.idempotency_key.reset(key)
            correlation.request_id.reset(token)


class _Tainted(Exception):
    """A command of the group raised after it changed the aggregate."""


class MessageBus:
    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        command_handlers: Mapping[type[commands.Command], CommandHandler],
        retry: RetryPolicy,
        delivery: Delivery,
        groupings: Mapping[type[commands.Command], Grouping] | None = None,
        group_commit: GroupCommit[Member] | None = None,
    ) -> None:
        self._uow_factory = uow_factory
        self._command_handlers = command_handlers
        self._retry = retry
        self._delivery = delivery
        self._groupings = groupings or {}
        self._group_commit = group_commit or GroupCommit()

    async def handle(self, command: commands.Command) -> None:
        grouping = self._groupings.get(type(command))
        if grouping is None:
            committed = await self._alone(command)
            self._committed(committed)
            return
        member = Member(
            command,
            correlation.request_id.get(),
            tracing.traceparent(),
            correlation.idempotency_key.get(),
        )
        await self._group_commit.submit(
            (type(command), grouping.key(command)), member, self._run_group
        )

    async def _alone(self, command: commands.Command) -> list[events.Event]:
        handler = self._command_handlers[type(command)]
        # A plain loop, not tenacity: building its retry state for every
        # command cost 3% of an allocation's CPU.
        for failures in range(self._retry.attempts):
            uow = self._uow_factory()
            try:
                await handler(command, uow)
                break
            except ConcurrencyError:
                if failures + 1 == self._retry.attempts:
                    raise
                await asyncio.sleep(self._retry.delay(failures + 1))
        return uow.committed_events

    async def _run_group(self, members: list[Member]) -> list[Outcome]:
        for failures in range(self._retry.attempts):
            try:
                outcomes = await self._group_attempt(members)
                break
            except ConcurrencyError:
                if failures + 1 == self._retry.attempts:
                    raise
                await asyncio.sleep(self._retry.delay(failures + 1))
            except _Tainted:
                outcomes = [await self._one_of(member) for member in members]
                break
        self._committed([e for outcome in outcomes if isinstance(outcome, list) for e in outcome])
        return outcomes

    async def _group_attempt(self, members: list[Member]) -> list[Outcome]:
        """One transaction for the group: each command in its turn, then one commit."""
        command_type = type(members[0].command)
        handler = self._command_handlers[command_type]
        uow = self._uow_factory()
        async with uow:
            await self._groupings[command_type].load([m.command for m in members], uow)
            outcomes: list[Outcome] = []
            for member in members:
                share = uow.share()
                try:
                    with member.acting():
                        await handler(member.command, share)
                except Exception as e:
                    if is_database_error(e):
                        raise  # the transaction is lost: the group's, as a whole
                    if share.changed_uncommitted:
                        raise _Tainted from e
                    outcomes.append(e)
                else:
                    outcomes.append(share.committed_events)
            await uow.commit()
        return outcomes

    async def _one_of(self, member: Member) -> Outcome:
        try:
            with member.acting():
                return await self._alone(member.command)
        except Exception as e:
            return e

    def _committed(self, committed: list[events.Event]) -> None:
        metrics.committed(committed)
        self._delivery.committed(committed)
