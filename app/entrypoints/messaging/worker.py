"""``allocation worker``: the consumers of change_batch_quantity and a relay, until SIGTERM.

Listening comes first. A pub/sub message published before a subscriber is
there is lost for it, so the worker subscribes to the channel with what that
needs alone (its settings and a Redis client), says so, and only then loads
the rest of the service; what arrives meanwhile waits on its connection.

With ``WORKER_PORT`` set it serves ``/health``, ``/ready`` and ``/metrics``
there (app.entrypoints.messaging.health).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from typing import TYPE_CHECKING

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from app import bootstrap, outages
from app.adapters import redis_client
from app.config import Settings

if TYPE_CHECKING:
    from app.container import Container
    from app.entrypoints.messaging.jetstream_transport import JetStreamConsumer
    from app.entrypoints.messaging.policy import MessagePolicy
    from app.entrypoints.messaging.redis_transport import PubSubConsumer, StreamConsumer

logger = logging.getLogger("app.worker")


def run(settings: Settings) -> int:
    """The worker's life; its exit code."""
    return bootstrap.run(settings, lambda: _work(settings))


async def _work(settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    client = None if settings.redis_url is None else redis_client.connect(settings.redis_url)
    on_redis = client is not None and "redis" in settings.brokers
    channel = settings.names.change_batch_quantity
    subscribed = await _subscribe(client, channel) if client is not None and on_redis else None
    try:
        return await _serve(settings, client, subscribed, stop)
    finally:
        if client is not None:
            await client.aclose()


async def _subscribe(client: Redis, channel: str) -> PubSub | None:
    from app.entrypoints.messaging.redis_transport import subscribe

    try:
        return await subscribe(client, channel)
    except (RedisError, OSError) as e:
        # The consumer keeps trying, as after any outage.
        outages.failed("redis", f"{type(e).__name__}: {e}")
        return None


async def _serve(
    settings: Settings, client: Redis | None, subscribed: PubSub | None, stop: asyncio.Event
) -> int:
    # The rest of the service, now that nothing published is missed.
    from app.entrypoints.messaging import health

    container = bootstrap.container_for(settings, redis=client)
    async with bootstrap.opened(container):
        consumers: list[PubSubConsumer | StreamConsumer | JetStreamConsumer] = []
        if client is not None and "redis" in settings.brokers:
            consumers += [pubsub_consumer(container, subscribed), stream_consumer(container)]
        if container.jetstream() is not None:
            consumers.append(jetstream_consumer(container))
        if not consumers:
            logger.warning("neither REDIS_URL nor NATS_URL is set: delivering the outbox only")
        work: dict[str, bootstrap.Work] = {c.source: c.run for c in consumers}
        if settings.worker_port is not None:
            checks = health.Health(container.engine(), client, consumers, container.jetstream())
            host, port = settings.worker_host, settings.worker_port
            work["health"] = lambda done: health.serve(checks, host, port, done)
        # The worker's relay runs whatever RELAY_ENABLED says: it is the API's switch.
        async with bootstrap.background(container, work, relay=True):
            logger.info("worker started")
            await stop.wait()
            logger.info("stopping: finishing the work in hand")
        logger.info("worker stopped")
        return 0


def policy(container: Container) -> MessagePolicy:
    """What becomes of each change_batch_quantity message: one per consumer, for its counts."""
    from app.entrypoints.messaging.policy import MessagePolicy

    dead_letters = container.dead_letters()
    if dead_letters is None:
        raise RuntimeError("the consumers need REDIS_URL or NATS_URL")
    return MessagePolicy(container.bus, dead_letters)


def pubsub_consumer(container: Container, subscribed: PubSub | None = None) -> PubSubConsumer:
    """The channel's consumer, reading ``subscribed`` first when there is one."""
    from app.entrypoints.messaging.redis_transport import PubSubConsumer

    channel = container.settings().names.change_batch_quantity
    return PubSubConsumer(
        _redis(container), policy(container), subscribed=subscribed, channel=channel
    )


def _redis(container: Container) -> Redis:
    client = container.redis()
    if client is None:
        raise RuntimeError("the Redis consumers need REDIS_URL")
    return client


def _name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def stream_consumer(container: Container) -> StreamConsumer:
    from app.entrypoints.messaging.redis_transport import StreamConsumer

    settings = container.settings()
    return StreamConsumer(
        _redis(container),
        policy(container),
        group=settings.stream_group_name,
        name=_name(),
        claim_idle=settings.stream_claim_idle,
        channel=settings.names.change_batch_quantity,
    )


def jetstream_consumer(container: Container) -> JetStreamConsumer:
    from app.entrypoints.messaging.jetstream_transport import JetStreamConsumer

    jetstream, settings = container.jetstream(), container.settings()
    if jetstream is None:
        raise RuntimeError("the JetStream consumer needs NATS_URL")
    return JetStreamConsumer(
        jetstream,
        policy(container),
        durable=settings.nats_durable_name,
        subject=settings.names.change_batch_quantity,
        ack_wait=settings.nats_ack_wait,
        max_deliver=settings.nats_max_deliver,
    )
