"""The operator's commands that change something: what ``allocation
rebuild-views`` and ``dead-letters`` do, each on the service's container, each
returning its exit code. (``allocation outbox``, a report, is
app.entrypoints.cli.outbox: it needs no container.)

Imported by the CLI only when one of them runs: ``allocation worker`` and
``allocation serve`` need none of this.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import RedisError

from app import bootstrap
from app.adapters.dead_letters import AbstractDeadLetters
from app.adapters.rebuild import rebuild_views
from app.adapters.schema_version import check_database
from app.adapters.unavailable import Unavailable
from app.config import Settings
from app.container import Container
from app.entrypoints.cli import dead_letters as dead_letter_commands
from app.entrypoints.messaging.worker import policy

T = TypeVar("T")


def run(settings: Settings, work: Callable[[Container], Awaitable[T]], database: bool = True) -> T:
    """``work`` on the service's container, opened and closed around it (app.bootstrap)."""

    async def main() -> T:
        async with bootstrap.opened(bootstrap.container_for(settings), database=database) as c:
            return await work(c)

    return bootstrap.run(settings, main)


def rebuild(settings: Settings, chunk: int) -> int:
    """Recompute every projection from the write model, in one transaction."""

    async def work(container: Container) -> int:
        if sys.stderr.isatty():
            from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeRemainingColumn(),
            ) as bar:
                tasks: dict[str, TaskID] = {}

                def show(view: str, done: int, total: int) -> None:
                    if view not in tasks:
                        tasks[view] = bar.add_task(view, total=total)
                    bar.update(tasks[view], completed=done)

                await _rebuild(container, show, chunk)
        else:

            def show(view: str, done: int, total: int) -> None:
                print(f"{view}: {done}/{total} rows", file=sys.stderr, flush=True)

            await _rebuild(container, show, chunk)
        print("views rebuilt")
        return 0

    return run(settings, work)


async def _rebuild(
    container: Container, progress: Callable[[str, int, int], None], chunk: int
) -> None:
    async with container.engine().begin() as conn:
        await rebuild_views(conn, progress, chunk)


def reconcile(settings: Settings) -> int:
    """Print each drift between the write model, its ledger and the read models; 1 if any."""
    from app.adapters import reconcile as drift

    async def work(container: Container) -> int:
        found = 0
        async with container.engine().begin() as conn:
            async for line in drift.drifts(conn):
                found += 1
                print(line)
            batches, lines, holds, rows = await drift.counts(conn)
        if found:
            print(f"{found} drifts found", file=sys.stderr)
            return 1
        print(
            f"no drift: {batches} batches, {lines} allocated lines, {holds} holds,"
            f" {rows} ledger rows"
        )
        return 0

    return run(settings, work)


def on_dead_letters(
    settings: Settings,
    work: Callable[[AbstractDeadLetters, Container], Awaitable[int]],
    database: bool = False,
) -> int:
    async def main(container: Container) -> int:
        dead_letters = container.dead_letters()
        if dead_letters is None:
            print(
                "neither REDIS_URL nor NATS_URL is set: there is no dead-letter list",
                file=sys.stderr,
            )
            return 1
        if database:
            await check_database(container.engine())
        try:
            return await work(dead_letters, container)
        except (RedisError, OSError) as e:
            print(f"cannot use Redis: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        except Unavailable as e:
            print(f"cannot use {e.dependency}: {e}", file=sys.stderr)
            return 1

    return run(settings, main, database=False)


def list_dead_letters(settings: Settings, as_json: bool) -> int:
    return on_dead_letters(
        settings, lambda dead_letters, _: dead_letter_commands.show(dead_letters, as_json)
    )


def replay_dead_letters(settings: Settings, letter_id: str | None) -> int:
    async def work(dead_letters: AbstractDeadLetters, container: Container) -> int:
        return await dead_letter_commands.replay(dead_letters, policy(container), letter_id)

    return on_dead_letters(settings, work, database=True)


def drop_dead_letters(settings: Settings, letter_id: str | None) -> int:
    return on_dead_letters(
        settings, lambda dead_letters, _: dead_letter_commands.drop(dead_letters, letter_id)
    )
