"""The composition root: every collaborator, its lifetime, and what it is given."""

from datetime import timedelta

from dependency_injector import containers, providers
from nats.js.api import RetentionPolicy
from redis.asyncio import Redis

from app.adapters import engines, jetstream, redis_client
from app.adapters.dead_letters import AbstractDeadLetters, RedisDeadLetters
from app.adapters.idempotency import SqlIdempotencyKeys
from app.adapters.jetstream import JetStream, StreamSpec
from app.adapters.jetstream_dead_letters import JetStreamDeadLetters
from app.adapters.liveness import for_engine as liveness_of
from app.adapters.notifications import (
    AbstractNotifications,
    EmailNotifications,
    LogNotifications,
)
from app.adapters.publisher import (
    AbstractPublisher,
    FanoutPublisher,
    JetStreamPublisher,
    NoPublisher,
    RedisPublisher,
)
from app.adapters.read_source import ReadSource
from app.config import Settings, load_settings
from app.service_layer import handlers
from app.service_layer.delivery import AfterCommitHandlers, Delivery
from app.service_layer.group_commit import GroupCommit
from app.service_layer.messagebus import Member, MessageBus, RetryPolicy
from app.service_layer.relay import Relay, RelaySettings
from app.service_layer.unit_of_work import SqlUnitOfWork
from app.wire import HOLD_CHANGED, LINE_ALLOCATED


def publisher(client: Redis | None, js: JetStream | None, settings: Settings) -> AbstractPublisher:
    publishers: list[AbstractPublisher] = []
    names = settings.names
    if client is not None and "redis" in settings.brokers:
        maxlen = settings.line_allocated_stream_maxlen
        streams = {LINE_ALLOCATED: maxlen, HOLD_CHANGED: maxlen}
        publishers.append(RedisPublisher(client, names, streams=streams))
    if js is not None:
        publishers.append(JetStreamPublisher(js, names))
    if not publishers:
        return NoPublisher()
    return publishers[0] if len(publishers) == 1 else FanoutPublisher(publishers)


def dead_letters(
    client: Redis | None, js: JetStream | None, key: str
) -> AbstractDeadLetters | None:
    """On Redis when it is set; else, on NATS alone, in a JetStream stream; else none."""
    if client is not None:
        return RedisDeadLetters(client, key)
    return None if js is None else JetStreamDeadLetters(js, key)


def stream_specs(settings: Settings) -> dict[str, StreamSpec]:
    """How the streams the service creates are made: the one it reads is a work queue."""
    names = settings.names
    return {
        names.change_batch_quantity: StreamSpec(retention=RetentionPolicy.WORK_QUEUE),
        names.line_allocated: StreamSpec(max_msgs=settings.line_allocated_stream_maxlen),
        names.hold_changed: StreamSpec(max_msgs=settings.line_allocated_stream_maxlen),
    }


def notifications(settings: Settings) -> AbstractNotifications:
    if settings.smtp_host is None:
        return LogNotifications()
    return EmailNotifications(
        settings.smtp_host, settings.smtp_port, settings.smtp_from, settings.notify_email
    )


def relay_settings(settings: Settings) -> RelaySettings:
    return RelaySettings(
        poll_interval=settings.relay_interval,
        retention=timedelta(seconds=settings.outbox_retention),
    )


class Container(containers.DeclarativeContainer):
    settings = providers.Singleton(load_settings)

    engine = providers.Resource(
        engines.engine_resource,
        url=settings.provided.database_url,
        pool_size=settings.provided.db_pool_size,
        writer=True,
        db_timeout=settings.provided.db_timeout,
    )
    # Reads on the primary: every read with one database; with a replica,
    # those it cannot serve, and writes' positions.
    read_engine = providers.Resource(
        engines.engine_resource,
        url=settings.provided.database_url,
        pool_size=settings.provided.db_pool_size,
        writer=False,
        db_timeout=settings.provided.db_timeout,
    )
    replica_engine = providers.Resource(
        engines.optional_engine_resource,
        url=settings.provided.read_database_url,
        pool_size=settings.provided.db_pool_size,
        db_timeout=settings.provided.db_timeout,
    )
    read_source = providers.Singleton(
        ReadSource,
        primary=read_engine,
        replica=replica_engine,
        wait=settings.provided.replica_wait,
        timeout=settings.provided.db_timeout,
        check_interval=settings.provided.replica_check_interval,
    )
    redis = providers.Resource(redis_client.resource, url=settings.provided.redis_url)
    jetstream = providers.Resource(
        jetstream.resource,
        servers=settings.provided.nats_servers,
        replicas=settings.provided.nats_stream_replicas,
        duplicate_window=settings.provided.nats_duplicate_window,
        specs=providers.Callable(stream_specs, settings),
    )

    publisher = providers.Singleton(publisher, client=redis, js=jetstream, settings=settings)
    dead_letters = providers.Singleton(
        dead_letters, client=redis, js=jetstream, key=settings.provided.dead_letter_list
    )
    notifications = providers.Singleton(notifications, settings=settings)
    retry = providers.Singleton(RetryPolicy, attempts=settings.provided.write_retries)
    relay_settings = providers.Singleton(relay_settings, settings=settings)
    # Started by the API alone (app.main): only its reservations need it.
    liveness = providers.Singleton(liveness_of, engine=engine)
    idempotency_keys = providers.Singleton(
        SqlIdempotencyKeys,
        engine=engine,
        liveness=liveness,
        ttl=providers.Factory(timedelta, seconds=settings.provided.idempotency_ttl),
    )

    # The handlers of each message are listed in app.service_layer.handlers;
    # here the after-commit ones are given what they reach.
    after_commit_handlers: providers.Singleton[AfterCommitHandlers] = providers.Singleton(
        handlers.after_commit_handlers, publisher=publisher, notifications=notifications
    )

    uow = providers.Factory(
        SqlUnitOfWork,
        engine=engine,
        inline=handlers.INLINE_HANDLERS,
        after_commit=after_commit_handlers,
    )
    delivery = providers.Singleton(
        Delivery,
        uow_factory=uow.provider,
        handlers=after_commit_handlers,
    )
    group_commit: providers.Singleton[GroupCommit[Member]] = providers.Singleton(GroupCommit)
    bus = providers.Factory(
        MessageBus,
        uow_factory=uow.provider,
        command_handlers=handlers.COMMAND_HANDLERS,
        retry=retry,
        delivery=delivery,
        groupings=handlers.GROUPINGS,
        group_commit=group_commit,
    )
    relay = providers.Singleton(Relay, delivery=delivery, settings=relay_settings)


_ASYNC_RESOURCES = ("engine", "read_engine", "replica_engine", "redis", "jetstream")


async def start(container: Container) -> None:
    """Open the container's resources (nothing connects before this)."""
    await container.init_resources()  # type: ignore[misc, unused-ignore]
    # Once an async resource is open, dependency-injector would still answer
    # every provider that depends on it with a Future; switch that off so the
    # rest of the graph stays plain.
    for name in _ASYNC_RESOURCES:
        getattr(container, name).disable_async_mode()


async def stop(container: Container) -> None:
    for name in _ASYNC_RESOURCES:
        getattr(container, name).enable_async_mode()
    await container.shutdown_resources()  # type: ignore[misc, unused-ignore]
