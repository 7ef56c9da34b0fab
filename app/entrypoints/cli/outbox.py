"""``allocation outbox``: how many events wait, how many keep failing, whether
pruning keeps up, and how far the workers are behind on change_batch_quantity.

A report changes nothing, so it needs no bus and no container: it opens the
database, Redis and NATS it reads, straight from their adapters, and has
answered before the rest of the service would have been imported.
"""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app import bootstrap
from app.adapters import engines, redis_client
from app.adapters.outbox import FAILING_AFTER, SqlOutbox
from app.adapters.schema_version import check_database
from app.adapters.streams import group_stats
from app.adapters.transactions import committed
from app.config import Settings

PRUNE_SLACK = 300.0  # seconds past the retention before pruning counts as behind
SHOWN_FAILING = 10  # failing events listed, the oldest first


def outbox(settings: Settings) -> int:
    return bootstrap.run(settings, lambda: _report(settings))


async def _report(settings: Settings) -> int:
    async with AsyncExitStack() as stack:
        engine = await stack.enter_async_context(
            asynccontextmanager(engines.engine_resource)(
                settings.database_url, pool_size=1, writer=True, db_timeout=settings.db_timeout
            )
        )
        await check_database(engine)
        async with committed(engine) as tx:
            outbox = SqlOutbox(tx)
            stats = await outbox.stats(failing_after=FAILING_AFTER)
            failing = await outbox.failing(failing_after=FAILING_AFTER, limit=SHOWN_FAILING)
        retention = settings.outbox_retention
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
        client = await stack.enter_async_context(
            asynccontextmanager(redis_client.resource)(settings.redis_url)
        )
        if client is not None:
            await _show_stream(
                client, settings.stream_group_name, settings.names.change_batch_quantity
            )
        if settings.nats_servers:
            await _show_jetstream(
                settings.nats_servers,
                settings.nats_durable_name,
                settings.names.change_batch_quantity,
            )
    return 0


async def _show_stream(client: Redis, group: str, stream: str) -> None:
    where = f"stream {stream}, group {group}"
    try:
        stats = await group_stats(client, stream, group)
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


async def _show_jetstream(servers: list[str], durable: str, subject: str) -> None:
    from app.adapters.jetstream import JetStream, NatsUnavailable, consumer_stats

    where = f"JetStream subject {subject}, consumer {durable}"
    jetstream = JetStream(servers)
    try:
        stats = await consumer_stats(jetstream, subject, durable)
    except NatsUnavailable as e:
        print(f"{where}: cannot read it ({e})")
        return
    finally:
        await jetstream.close()
    if stats is None:
        print(f"{where}: no such consumer yet (no worker has read the subject)")
        return
    print(
        f"{where}: pending {stats.pending} (not delivered yet), ack pending "
        f"{stats.ack_pending} (delivered, not acknowledged), redelivered {stats.redelivered}"
    )


def _seconds(age: float | None) -> str:
    return "-" if age is None else f"{age:.1f}s"
