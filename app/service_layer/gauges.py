"""The backlog gauges of /metrics, kept fresh in the background rather than read per scrape.

The outbox's backlog is the database's, the stream group's Redis's and the
durable consumer's JetStream's, whichever process adds to them: every API
process and worker reads them every ``GAUGE_INTERVAL`` seconds, so that a
scrape costs no more than a read and reads nothing itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app import metrics, outages, tracing
from app.adapters.database_errors import DatabaseUnavailable
from app.adapters.jetstream import JetStream, NatsUnavailable, consumer_stats
from app.adapters.outbox import FAILING_AFTER
from app.adapters.streams import group_stats
from app.service_layer.unit_of_work import AbstractUnitOfWork
from app.wire import CHANGE_BATCH_QUANTITY

logger = logging.getLogger(__name__)

GAUGE_INTERVAL = 5.0  # seconds


@dataclass(frozen=True)
class Backlogs:
    """Where change_batch_quantity waits: the Redis stream's group, the JetStream consumer."""

    redis: Redis | None
    group: str
    jetstream: JetStream | None
    durable: str
    stream: str = CHANGE_BATCH_QUANTITY  # the stream, and the subject


async def keep(
    uow_factory: Callable[[], AbstractUnitOfWork],
    backlogs: Backlogs,
    stop: asyncio.Event,
    every: float = GAUGE_INTERVAL,
) -> None:
    """Refresh the gauges every ``every`` seconds until ``stop``."""
    while not stop.is_set():
        with tracing.quiet():
            await outbox(uow_factory)
            await stream(backlogs.redis, backlogs.group, backlogs.stream)
            await jetstream(backlogs.jetstream, backlogs.durable, backlogs.stream)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def outbox(uow_factory: Callable[[], AbstractUnitOfWork]) -> None:
    try:
        async with uow_factory() as uow:
            stats = await uow.outbox.stats(failing_after=FAILING_AFTER)
    except DatabaseUnavailable as e:
        outages.failed("database", str(e))
        return
    except Exception:
        logger.exception("reading the outbox's backlog failed")
        return
    outages.succeeded("database")
    metrics.OUTBOX_PENDING.set(stats.pending)
    metrics.OUTBOX_FAILING.set(stats.failing)
    metrics.OUTBOX_OLDEST.set(stats.oldest_pending_age or 0.0)
    metrics.OUTBOX_OLDEST_DELIVERED.set(stats.oldest_delivered_age or 0.0)
    metrics.changed()


async def stream(client: Redis | None, group: str, name: str = CHANGE_BATCH_QUANTITY) -> None:
    if client is None:
        return
    try:
        stats = await group_stats(client, name, group)
    except (RedisError, OSError) as e:
        outages.failed("redis", f"{type(e).__name__}: {e}")
        return
    outages.succeeded("redis")
    if stats is None:  # no worker has read the stream yet
        return
    metrics.STREAM_PENDING.labels(name, group).set(stats.pending)
    metrics.STREAM_LAG.labels(name, group).set(float("nan") if stats.lag is None else stats.lag)
    metrics.changed()


async def jetstream(
    js: JetStream | None, durable: str, subject: str = CHANGE_BATCH_QUANTITY
) -> None:
    if js is None:
        return
    try:
        stats = await consumer_stats(js, subject, durable)
    except NatsUnavailable:
        return  # reported as an outage
    if stats is None:  # no worker has read the subject yet
        return
    metrics.JETSTREAM_PENDING.labels(subject, durable).set(stats.pending)
    metrics.JETSTREAM_ACK_PENDING.labels(subject, durable).set(stats.ack_pending)
    metrics.JETSTREAM_REDELIVERED.labels(subject, durable).set(stats.redelivered)
    metrics.changed()
