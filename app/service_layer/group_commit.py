"""Group commit: commands for one aggregate that arrive during a transaction on it join the next.

Per aggregate (a key: the product's sku), a process runs one transaction at
a time. A command that finds none in flight runs at once, alone, in its
caller's own task: the uncontended case pays nothing. Commands that arrive
meanwhile wait, in the order they came; when the transaction ends, they all
run in the next one, together: one lock, one read of the aggregate, each
command handled in its turn, one commit. Then the next group, until no one
waits. Each caller gets its own outcome, its events or its exception.

Policy:
- Order: a group's commands are handled in the order they arrived, and
  groups in the order they formed, so that one process applies the commands
  of an aggregate in the order they came. Across processes the aggregate's
  lock orders the transactions.
- A caller cancelled while waiting leaves its group before it runs; once
  its group runs, its command is handled whatever becomes of the caller,
  as a request that got as far as the database would be.
- A group holds at most ``max_size`` commands; the rest wait for the next.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeAlias, TypeVar

from app.domain import events

T = TypeVar("T")
# What one command came to: the events it committed, or what it raised.
Outcome: TypeAlias = list[events.Event] | BaseException
# Runs a group of commands in one transaction: an outcome for each, in order.
RunGroup: TypeAlias = Callable[[list[T]], Awaitable[list[Outcome]]]


@dataclass
class _Waiting(Generic[T]):
    item: T
    answer: asyncio.Future[list[events.Event]]


@dataclass
class _Lane(Generic[T]):
    """One aggregate's commands: a transaction in flight, and those waiting for the next."""

    run: RunGroup[T]
    waiting: list[_Waiting[T]] = field(default_factory=list)


class GroupCommit(Generic[T]):
    def __init__(self, max_size: int = 256) -> None:
        self._max_size = max_size
        self._lanes: dict[Hashable, _Lane[T]] = {}
        self._drivers: set[asyncio.Task[None]] = set()  # held: the loop keeps weak references

    def waiting(self) -> int:
        """How many commands wait for a transaction on their aggregate to end."""
        return sum(len(lane.waiting) for lane in self._lanes.values())

    async def submit(self, key: Hashable, item: T, run: RunGroup[T]) -> list[events.Event]:
        """``item``'s events once its group has committed, or what handling it raised."""
        lane = self._lanes.get(key)
        if lane is not None:
            waiting = _Waiting(item, asyncio.get_running_loop().create_future())
            lane.waiting.append(waiting)
            return await waiting.answer
        lane = self._lanes[key] = _Lane(run)
        try:
            [outcome] = await run([item])
        finally:
            self._next(key, lane)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _next(self, key: Hashable, lane: _Lane[T]) -> None:
        """The lane's transaction ended: the commands waiting run next, in a task of their own."""
        if not lane.waiting:
            del self._lanes[key]
            return
        driver = asyncio.create_task(self._drive(key, lane))
        self._drivers.add(driver)
        driver.add_done_callback(self._drivers.discard)

    async def _drive(self, key: Hashable, lane: _Lane[T]) -> None:
        try:
            while lane.waiting:
                group = [w for w in lane.waiting[: self._max_size] if not w.answer.done()]
                del lane.waiting[: self._max_size]
                if group:
                    await _run(lane.run, group)
        finally:
            for waiting in lane.waiting:  # only if this task was cancelled
                waiting.answer.cancel()
            del self._lanes[key]


async def _run(run: RunGroup[T], group: list[_Waiting[T]]) -> None:
    try:
        outcomes = await run([w.item for w in group])
    except Exception as e:
        outcomes = [e] * len(group)
    except BaseException:
        for waiting in group:
            waiting.answer.cancel()
        raise
    for waiting, outcome in zip(group, outcomes, strict=True):
        if waiting.answer.done():  # its caller was cancelled meanwhile
            continue
        if isinstance(outcome, BaseException):
            waiting.answer.set_exception(outcome)
        else:
            waiting.answer.set_result(outcome)
