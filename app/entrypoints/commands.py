"""The operator's commands: what ``allocation outbox``, ``rebuild-views`` and
``dead-letters`` do, each on the service's container, each returning its exit code.

Imported by the CLI only when one of them runs: ``allocation worker`` and
``allocation serve`` need none of this.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from dependency_injector import providers
from redis.exceptions import RedisError

from app import container as composition
from app import logs, tracing
from app.adapters.dead_letters import AbstractDeadLetters
from app.adapters.jetstream import NatsUnavailable, consumer_stats
from app.adapters.outbox import FAILING_AFTER
from app.adapters.rebuild import rebuild_views
from app.adapters.schema_version import StartupError, check_database
from app.adapters.streams import group_stats
from app.adapters.unavailable import Unavailable
from app.config import Settings
from app.container import Container
from app.entrypoints import dead_letter_commands
from app.entrypoints.channels import CHANGE_BATCH_QUANTITY as STREAM
from app.entrypoints.worker import policy

logger = logging.getLogger("app.cli")
T = TypeVar("T")

PRUNE_SLACK = 300.0  # seconds past the retention before pruning counts as behind


def run(settings: Settings, work: Callable[[Container], Awaitable[T]], database: bool = True) -> T:
    """``work`` on the service's container, opened and closed around it.

    A database that is unreachable or not migrated stops it: one line, exit 1.
    """

    async def main() -> T:
        container = Container()
        container.settings.override(providers.Object(settings))
        logs.configure(settings.log_level, settings.log_format)
        tracing.start()
        await composition.start(container)
        try:
            if database:
                await check_database(container.engine())
            return await work(container)
        finally:
            await composition.stop(container)
            tracing.stop()

    try:
        return asyncio.run(main())
    except StartupError as e:
        logger.critical("cannot start: %s", e)
        raise SystemExit(1) from None


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


def outbox(settings: Settings) -> int:
    """How many events wait, how many keep failing, whether pruning keeps up; the stream's lag."""

    async def work(container: Container) -> int:
        async with container.uow() as uow:
            stats = await uow.outbox.stats(failing_after=FAILING_AFTER)
            failing = await uow.outbox.failing(failing_after=FAILING_AFTER, limit=10)
        retention = container.settings().outbox_retention
        print(f"pending: {stats.pending}")
        print(f"failing: {stats.failing}  (undelivered, and a delivery failed)")
        print(f"oldest pending: {_seconds(stats.oldest_pending_age)}")
        print(f"oldest delivered: {_seconds(stats.oldest_delivered_age)}  (kept {retention:g}s)")
        for event in failing:
            print(f"  {event.type} {event.id}: {event.attempts} attempts; {event.last_error}")
        behind = stats.oldest_delivered_age or 0.0
        if behind > retention + PRUNE_SLACK:
            print(
                f"pruning is behind: events delivered {behind - retention:.0f}s past the "
                "retention are still kept; see the relay's log "
                "(allocation_outbox_prune_failures_total in /metrics)"
            )
        await _show_stream(container)
        await _show_jetstream(container)
        return 0

    return run(settings, work)


async def _show_stream(container: Container) -> None:
    client, group = container.redis(), container.settings().stream_group
    if client is None:
        return
    where = f"stream {STREAM}, group {group}"
    try:
        stats = await group_stats(client, STREAM, group)
    except (RedisError, OSError) as e:
        print(f"{where}: cannot read it ({type(e).__name__}: {e})")
        return
    if stats is None:
        print(f"{where}: no such group yet (no worker has read the stream)")
        return
    lag = "-" if stats.lag is None else str(stats.lag)
    print(
        f"{where}: pending {stats.pending} (read, not acknowledged), lag {lag} "
        f"(not read yet), {stats.consumers} consumers"
    )


async def _show_jetstream(container: Container) -> None:
    jetstream, durable = container.jetstream(), container.settings().nats_durable
    if jetstream is None:
        return
    where = f"JetStream subject {STREAM}, consumer {durable}"
    try:
        stats = await consumer_stats(jetstream, STREAM, durable)
    except NatsUnavailable as e:
        print(f"{where}: cannot read it ({e})")
        return
    if stats is None:
        print(f"{where}: no such consumer yet (no worker has read the subject)")
        return
    print(
        f"{where}: pending {stats.pending} (not delivered yet), ack pending "
        f"{stats.ack_pending} (delivered, not acknowledged), redelivered {stats.redelivered}"
    )


def _seconds(age: float | None) -> str:
    return "-" if age is None else f"{age:.1f}s"


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
