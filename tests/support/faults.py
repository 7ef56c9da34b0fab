"""Faults, injected by overriding the container's providers.

Before the container first builds what depends on them: a unit of work that
crashes right after its commit, one that loses the database as a group of
commands commits, an after-commit handler that fails after it
ran, a publisher that fails.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from dependency_injector import providers
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters.publisher import AbstractPublisher
from app.container import Container
from app.domain import events
from app.service_layer.delivery import AfterCommitHandlers, EventHandler
from app.service_layer.handlers import INLINE_HANDLERS
from app.service_layer.unit_of_work import InlineHandlers, Share, SqlUnitOfWork


class InjectedFault(Exception):
    """A failure the test asked for."""


@dataclass
class Faults:
    """How many more times a fault is to strike; and how often it did."""

    times: int = 1
    struck: int = 0

    def strike(self, what: str) -> None:
        if self.times > 0:
            self.times -= 1
            self.struck += 1
            raise InjectedFault(what)


class FaultyUnitOfWork(SqlUnitOfWork):
    """A unit of work that strikes ``faults`` somewhere: subclasses say where."""

    def __init__(
        self,
        engine: AsyncEngine,
        inline: InlineHandlers | None = None,
        after_commit: Collection[type[events.Event]] = (),
        *,
        faults: Faults,
    ) -> None:
        super().__init__(engine, inline, after_commit)
        self._faults = faults


class CrashesAfterCommit(FaultyUnitOfWork):
    """Commits, then fails: as a process would that died right after its commit."""

    async def _commit(self) -> None:
        await super()._commit()
        self._faults.strike("crash after the commit")


class FailsToCommit(FaultyUnitOfWork):
    """Fails as it would commit: nothing of its transaction is kept."""

    async def _commit(self) -> None:
        self._faults.strike("failed to commit")
        await super()._commit()


class DiesAtAGroupsCommit(FaultyUnitOfWork):
    """Loses its connection just before it commits, when it holds several commands.

    The server drops the backend, as on a restart or a network cut: the
    transaction is rolled back, and the commit fails with a lost connection.
    """

    _commands = 0

    def share(self) -> Share:
        self._commands += 1
        return super().share()

    async def _commit(self) -> None:
        if self._commands > 1 and self._faults.times > 0:
            self._faults.times -= 1
            self._faults.struck += 1
            pid = await self.tx.scalar(select(func.pg_backend_pid()))
            async with self.tx.engine.connect() as other:
                await other.execute(select(func.pg_terminate_backend(pid)))
        await super()._commit()


def faulty_units_of_work(
    container: Container, unit_of_work: type[FaultyUnitOfWork], times: int
) -> Faults:
    """The container's units of work from now on are ``unit_of_work``s, striking ``times``."""
    faults = Faults(times)
    container.uow.override(
        providers.Factory(
            unit_of_work,
            engine=container.engine,
            inline=INLINE_HANDLERS,
            after_commit=container.after_commit_handlers,
            faults=providers.Object(faults),
        )
    )
    return faults


def lose_a_groups_commit(container: Container, times: int = 1) -> Faults:
    """The next ``times`` transactions of several commands lose the database as they commit."""
    return faulty_units_of_work(container, DiesAtAGroupsCommit, times)


def fail_to_commit(container: Container, times: int = 1) -> Faults:
    """The next ``times`` commits of the container's units of work fail, committing nothing."""
    return faulty_units_of_work(container, FailsToCommit, times)


def crash_after_commit(container: Container, times: int = 1) -> Faults:
    """The next ``times`` commits of the container's units of work crash right after.

    Every unit of work counts, a delivery pass's too. ``container.uow.reset_override()``
    ends it.
    """
    return faulty_units_of_work(container, CrashesAfterCommit, times)


def fail_after_running(handler: EventHandler, faults: Faults, name: str) -> EventHandler:
    """``handler``, which raises after it ran, as long as ``faults`` says so."""

    async def run_then_fail(event: Any) -> None:
        await handler(event)
        faults.strike(f"{name} failed after it ran")

    return run_then_fail


def failing_after_it_ran(container: Container, name: str, times: int = 1) -> Faults:
    """The after-commit handler ``name`` fails ``times`` times, each after it did its work.

    Call before the container builds delivery or a unit of work.
    """
    faults = Faults(times)
    real = container.after_commit_handlers()
    wrapped = {
        event_type: {
            n: fail_after_running(h, faults, n) if n == name else h for n, h in handlers.items()
        }
        for event_type, handlers in real.items()
    }
    assert any(name in handlers for handlers in wrapped.values()), f"no handler {name}"
    override_after_commit_handlers(container, wrapped)
    return faults


def override_after_commit_handlers(container: Container, handlers: AfterCommitHandlers) -> None:
    """Delivery and the units of work use ``handlers``: before either is built."""
    container.after_commit_handlers.override(providers.Object(handlers))


@dataclass
class FlakyPublisher(AbstractPublisher):
    """The real publisher, but the next ``faults.times`` publishes fail, as while Redis is down."""

    real: AbstractPublisher
    faults: Faults = field(default_factory=Faults)

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        self.faults.strike("publisher down")
        await self.real.publish(channel, payload)


def failing_publisher(container: Container, times: int = 1) -> Faults:
    """The next ``times`` publishes fail: call before the container builds its handlers."""
    publisher = FlakyPublisher(container.publisher(), Faults(times))
    container.publisher.override(providers.Object(publisher))
    return publisher.faults
