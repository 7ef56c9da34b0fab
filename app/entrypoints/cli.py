"""The ``allocation`` command: the worker, and the operator's tools."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import typer
from redis.exceptions import RedisError
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from app import container as composition
from app import logs, metrics
from app.adapters.dead_letters import RedisDeadLetters
from app.adapters.outbox import FAILING_AFTER
from app.adapters.rebuild import rebuild_views
from app.adapters.schema_version import StartupError, check_database
from app.adapters.streams import group_stats
from app.config import InvalidSettings
from app.container import Container
from app.entrypoints import dead_letter_commands
from app.entrypoints.redis_consumer import STREAM, PubSubConsumer, StreamConsumer

cli = typer.Typer(help="The allocation service's worker and tools.", no_args_is_help=True)
logger = logging.getLogger("app.cli")
T = TypeVar("T")

PRUNE_SLACK = 300.0  # seconds past the retention before pruning counts as behind


def _run(work: Callable[[Container], Awaitable[T]], database: bool = True) -> T:
    async def main() -> T:
        container = Container()
        settings = container.settings()
        logs.configure(settings.log_level, settings.log_format)
        await composition.start(container)
        try:
            if database:
                await check_database(container.engine())
            return await work(container)
        finally:
            await composition.stop(container)

    try:
        return asyncio.run(main())
    except StartupError as e:
        logger.critical("cannot start: %s", e)
        raise typer.Exit(1) from None
    except InvalidSettings as e:  # before logging is set up: straight to stderr
        typer.echo(f"cannot start: {e}", err=True)
        raise typer.Exit(1) from None


@cli.command()
def worker() -> None:
    """Consume external events from Redis and deliver the outbox, until SIGTERM.

    On SIGTERM it takes no more messages, handles those it has received, and
    logs how many it received, applied and dead-lettered.
    """

    async def work(container: Container) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        port = container.settings().worker_metrics_port
        if port is not None:
            # The worker's own counts (dead letters, relay failures, projection
            # lag of what it delivers), in a thread of prometheus-client's.
            metrics.serve(port)
            logger.info("metrics on port %d", port)
        tasks = [asyncio.create_task(container.relay().run(stop), name="relay")]
        consumer, stream_consumer = _consumer(container), _stream_consumer(container)
        if consumer is None or stream_consumer is None:
            logger.warning("REDIS_URL is not set: delivering the outbox only")
        else:
            tasks.append(asyncio.create_task(consumer.run(stop), name="consumer"))
            tasks.append(asyncio.create_task(stream_consumer.run(stop), name="stream consumer"))
        logger.info("worker started")
        await stop.wait()
        logger.info("stopping: finishing the work in hand")
        await asyncio.gather(*tasks)
        logger.info("worker stopped")

    _run(work)


@cli.command("rebuild-views")
def rebuild_views_command(
    chunk: int = typer.Option(5000, min=1, help="Rows read and written at a time."),
) -> None:
    """Recompute every projection from the write model, in one transaction."""

    async def work(container: Container) -> None:
        if sys.stderr.isatty():
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

    _run(work)


async def _rebuild(
    container: Container, progress: Callable[[str, int, int], None], chunk: int
) -> None:
    async with container.engine().begin() as conn:
        await rebuild_views(conn, progress, chunk)


@cli.command()
def outbox() -> None:
    """How many events wait for delivery, how many keep failing, whether pruning keeps up.

    And, with Redis, how far the workers are behind on the change_batch_quantity stream.
    """

    async def work(container: Container) -> None:
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

    _run(work)


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


def _seconds(age: float | None) -> str:
    return "-" if age is None else f"{age:.1f}s"


def _consumer(container: Container) -> PubSubConsumer | None:
    client, dead_letters = container.redis(), container.dead_letters()
    if client is None or dead_letters is None:
        return None
    return PubSubConsumer(client, container.bus, dead_letters)


def _stream_consumer(container: Container) -> StreamConsumer | None:
    client, dead_letters = container.redis(), container.dead_letters()
    if client is None or dead_letters is None:
        return None
    settings = container.settings()
    return StreamConsumer(
        client,
        container.bus,
        dead_letters,
        group=settings.stream_group,
        name=f"{socket.gethostname()}-{os.getpid()}",
        claim_idle=settings.stream_claim_idle,
    )


dead_letters_cli = typer.Typer(
    help="change_batch_quantity messages that could not be applied: list, replay, drop.",
    no_args_is_help=True,
)
cli.add_typer(dead_letters_cli, name="dead-letters")


def _on_dead_letters(
    work: Callable[[RedisDeadLetters, Container], Awaitable[int]], database: bool = False
) -> None:
    async def run(container: Container) -> int:
        dead_letters = container.dead_letters()
        if dead_letters is None:
            typer.echo("REDIS_URL is not set: there is no dead-letter list", err=True)
            return 1
        if database:
            await check_database(container.engine())
        try:
            return await work(dead_letters, container)
        except (RedisError, OSError) as e:
            typer.echo(f"cannot use Redis: {type(e).__name__}: {e}", err=True)
            return 1

    code = _run(run, database=False)
    if code:
        raise typer.Exit(code)


def _one_or_all(letter_id: str | None, all_: bool) -> None:
    if (letter_id is None) == (not all_):
        typer.echo("give a dead letter's id, or --all", err=True)
        raise typer.Exit(2)


@dead_letters_cli.command("list")
def list_dead_letters(
    as_json: bool = typer.Option(False, "--json", help="Every entry in full, as JSON."),
) -> None:
    """Each dead letter: id, when it failed, attempts, error, the message's start."""
    _on_dead_letters(lambda dead_letters, _: dead_letter_commands.show(dead_letters, as_json))


@dead_letters_cli.command("replay")
def replay_dead_letters(
    letter_id: str | None = typer.Argument(None, metavar="ID"),
    all_: bool = typer.Option(False, "--all", help="Every dead letter, one at a time."),
) -> None:
    """Apply dead letters again; one that fails again goes back on the list."""
    _one_or_all(letter_id, all_)

    async def work(dead_letters: RedisDeadLetters, container: Container) -> int:
        consumer = _consumer(container)
        assert consumer is not None  # there are dead letters, so there is Redis
        return await dead_letter_commands.replay(dead_letters, consumer, letter_id)

    _on_dead_letters(work, database=True)


@dead_letters_cli.command("drop")
def drop_dead_letters(
    letter_id: str | None = typer.Argument(None, metavar="ID"),
    all_: bool = typer.Option(False, "--all", help="Every dead letter."),
) -> None:
    """Remove dead letters for good."""
    _one_or_all(letter_id, all_)
    _on_dead_letters(lambda dead_letters, _: dead_letter_commands.drop(dead_letters, letter_id))


def main() -> None:
    cli()
