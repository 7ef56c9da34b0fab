"""The ``allocation`` command: the API's server, the worker, and the operator's tools.

Each command imports what it uses when it runs: ``allocation worker`` is
listening, and ``allocation outbox`` has answered, before the rest of the
service would have been imported.
"""

from __future__ import annotations

import typer

from app import logs
from app.config import InvalidSettings, Settings, load_settings

cli = typer.Typer(help="The allocation service's worker and tools.", no_args_is_help=True)


def _settings() -> Settings:
    try:
        return load_settings()
    except InvalidSettings as e:
        logs.cannot_start(str(e))
        raise typer.Exit(1) from None


def _exit(code: int) -> None:
    if code:
        raise typer.Exit(code)


@cli.command()
def serve(
    host: str | None = typer.Option(None, help="Address to listen on [default: HOST]."),
    port: int | None = typer.Option(None, help="Port to listen on [default: PORT]."),
    workers: int | None = typer.Option(
        None, min=1, help="API processes [default: WEB_CONCURRENCY]."
    ),
) -> None:
    """Serve the HTTP API, as in production, until SIGTERM.

    uvicorn with the service's connection limits and log format; settings the
    API must not run with (production without API_TOKEN) stop it at once.
    """
    settings = _settings()
    try:
        settings.check_api()
    except InvalidSettings as e:
        logs.cannot_start(str(e), settings)
        raise typer.Exit(1) from None
    from app.entrypoints.http.server import serve as serve_api

    serve_api(
        settings,
        host or settings.host,
        settings.port if port is None else port,
        workers or settings.web_concurrency,
    )


@cli.command()
def health(
    ready: bool = typer.Option(False, "--ready", help="Ask /ready: can it work, not only live."),
) -> None:
    """Exit 0 if this machine's API (on PORT) or worker (on WORKER_PORT) answers /health.

    The image's health check: it fits whichever of the two the container runs.
    """
    import urllib.request

    settings = _settings()
    path = "/ready" if ready else "/health"
    local = {"0.0.0.0", "::", ""}
    ports = [(settings.host, settings.port), (settings.worker_host, settings.worker_port)]
    for host, port in ports:
        if port is None:
            continue
        url = f"http://{'127.0.0.1' if host in local else host}:{port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            continue
    typer.echo(f"no process answers {path} on port {settings.port} or WORKER_PORT", err=True)
    raise typer.Exit(1)


@cli.command()
def migrate() -> None:
    """Bring the database's schema up to this code's: every migration it lacks, in order."""
    settings = _settings()
    from app.adapters.schema_version import migrate as upgrade

    logs.configure(settings.log_level, settings.log_format)
    upgrade()
    print("migrated")


@cli.command()
def worker() -> None:
    """Consume change_batch_quantity (Redis, JetStream) and deliver the outbox, until SIGTERM.

    It listens first, then loads the rest. On SIGTERM it takes no more
    messages, applies what it holds for 2.5 s, hands back the rest, and logs
    how many it received, applied, dead-lettered and handed back.
    """
    settings = _settings()
    from app.entrypoints.messaging import worker as worker_process

    _exit(worker_process.run(settings))


@cli.command("rebuild-views")
def rebuild_views(
    chunk: int = typer.Option(5000, min=1, help="Rows read and written at a time."),
) -> None:
    """Recompute every projection from the write model, in one transaction."""
    settings = _settings()
    from app.entrypoints.cli import maintenance as commands

    _exit(commands.rebuild(settings, chunk))


@cli.command()
def reconcile() -> None:
    """Check batches against their ledger, and read models against the write model.

    Prints each drift and exits 1, or one line and exits 0 when there is none."""
    settings = _settings()
    from app.entrypoints.cli import maintenance as commands

    _exit(commands.reconcile(settings))


@cli.command()
def outbox() -> None:
    """How many events wait for delivery, how many keep failing, whether pruning keeps up.

    And how far the workers are behind on change_batch_quantity: with Redis the
    stream's consumer group, with NATS JetStream the durable consumer.
    """
    settings = _settings()
    from app.entrypoints.cli.outbox import outbox as report

    _exit(report(settings))


dead_letters_cli = typer.Typer(
    help="change_batch_quantity messages that could not be applied: list, replay, drop.",
    no_args_is_help=True,
)
cli.add_typer(dead_letters_cli, name="dead-letters")


def _one_or_all(letter_id: str | None, all_: bool) -> None:
    if (letter_id is None) == (not all_):
        typer.echo("give a dead letter's id, or --all", err=True)
        raise typer.Exit(2)


@dead_letters_cli.command("list")
def list_dead_letters(
    as_json: bool = typer.Option(False, "--json", help="Every entry in full, as JSON."),
) -> None:
    """Each dead letter: id, when it failed, attempts, error, the message's start."""
    settings = _settings()
    from app.entrypoints.cli import maintenance as commands

    _exit(commands.list_dead_letters(settings, as_json))


@dead_letters_cli.command("replay")
def replay_dead_letters(
    letter_id: str | None = typer.Argument(None, metavar="ID"),
    all_: bool = typer.Option(False, "--all", help="Every dead letter, one at a time."),
) -> None:
    """Apply dead letters again; one that fails again goes back on the list."""
    _one_or_all(letter_id, all_)
    settings = _settings()
    from app.entrypoints.cli import maintenance as commands

    _exit(commands.replay_dead_letters(settings, letter_id))


@dead_letters_cli.command("drop")
def drop_dead_letters(
    letter_id: str | None = typer.Argument(None, metavar="ID"),
    all_: bool = typer.Option(False, "--all", help="Every dead letter."),
) -> None:
    """Remove dead letters for good."""
    _one_or_all(letter_id, all_)
    settings = _settings()
    from app.entrypoints.cli import maintenance as commands

    _exit(commands.drop_dead_letters(settings, letter_id))


def main() -> None:
    cli()
