"""The composition root: every collaborator, its lifetime, and what it is given."""

from collections.abc import AsyncIterator
from datetime import timedelta
from functools import partial

from dependency_injector import containers, providers
from redis.asyncio import Redis

from app.adapters import database
from app.adapters.dead_letters import RedisDeadLetters
from app.adapters.idempotency import SqlAlchemyIdempotencyKeys
from app.adapters.notifications import (
    AbstractNotifications,
    EmailNotifications,
    LogNotifications,
)
from app.adapters.publisher import AbstractPublisher, NoPublisher, RedisPublisher
from app.adapters.read_source import ReadSource
from app.config import Settings, load_settings
from app.domain import commands, events
from app.entrypoints.api.idempotency import Idempotency
from app.service_layer import handlers
from app.service_layer.delivery import AfterCommitHandlers, Backoff, Delivery
from app.service_layer.messagebus import MessageBus, RetryPolicy
from app.service_layer.relay import Relay, RelaySettings
from app.service_layer.unit_of_work import InlineHandlers, SqlAlchemyUnitOfWork


async def redis_resource(url: str | None) -> AsyncIterator[Redis | None]:
    if url is None:
        yield None
        return
    client = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        yield client
    finally:
        await client.aclose()


def publisher(client: Redis | None, line_allocated_maxlen: int) -> AbstractPublisher:
    if client is None:
        return NoPublisher()
    return RedisPublisher(client, streams={"line_allocated": line_allocated_maxlen})


def dead_letters(client: Redis | None, key: str) -> RedisDeadLetters | None:
    return None if client is None else RedisDeadLetters(client, key)


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
        database.engine_resource,
        url=settings.provided.database_url,
        pool_size=settings.provided.db_pool_size,
        writer=True,
        db_timeout=settings.provided.db_timeout,
    )
    # Reads on the primary: every read with one database; with a replica,
    # those it cannot serve, and writes' positions.
    read_engine = providers.Resource(
        database.engine_resource,
        url=settings.provided.database_url,
        pool_size=settings.provided.db_pool_size,
        writer=False,
        db_timeout=settings.provided.db_timeout,
    )
    replica_engine = providers.Resource(
        database.optional_engine_resource,
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
    redis = providers.Resource(redis_resource, url=settings.provided.redis_url)

    publisher = providers.Singleton(
        publisher,
        client=redis,
        line_allocated_maxlen=settings.provided.line_allocated_stream_maxlen,
    )
    dead_letters = providers.Singleton(
        dead_letters, client=redis, key=settings.provided.dead_letter_key
    )
    notifications = providers.Singleton(notifications, settings=settings)
    retry = providers.Singleton(RetryPolicy, attempts=settings.provided.write_retries)
    relay_settings = providers.Singleton(relay_settings, settings=settings)
    idempotency_keys = providers.Singleton(
        SqlAlchemyIdempotencyKeys,
        engine=engine,
        ttl=providers.Factory(timedelta, seconds=settings.provided.idempotency_ttl),
    )
    idempotency = providers.Singleton(Idempotency, keys=idempotency_keys)

    # Event handlers, under the names they are known by (stored, for the
    # after-commit ones: a name outlives its function's). Built once.
    # Inline: in the transaction that raised the event; they write only this database.
    inline_handlers: providers.Singleton[InlineHandlers] = providers.Singleton(
        dict,
        providers.Dict(
            {
                events.BatchCreated: providers.Dict(
                    add_batch_to_read_model=providers.Object(handlers.add_batch_to_read_model),
                ),
                events.BatchQuantityChanged: providers.Dict(
                    resize_batch_in_read_model=providers.Object(
                        handlers.resize_batch_in_read_model
                    ),
                ),
                events.Allocated: providers.Dict(
                    add_allocation_to_read_model=providers.Object(
                        handlers.add_allocation_to_read_model
                    ),
                ),
                events.LineRefused: providers.Dict(
                    add_refusal_to_read_model=providers.Object(handlers.add_refusal_to_read_model),
                ),
                events.Deallocated: providers.Dict(
                    remove_allocation_from_read_model=providers.Object(
                        handlers.remove_allocation_from_read_model
                    ),
                    reallocate=providers.Object(handlers.reallocate),
                ),
            }
        ),
    )
    # After the commit, from the outbox: they reach outside this database.
    after_commit_handlers: providers.Singleton[AfterCommitHandlers] = providers.Singleton(
        dict,
        providers.Dict(
            {
                events.Allocated: providers.Dict(
                    publish_allocated_event=providers.Factory(
                        partial, handlers.publish_allocated_event, publisher=publisher
                    ),
                ),
                events.OutOfStock: providers.Dict(
                    send_out_of_stock_notification=providers.Factory(
                        partial,
                        handlers.send_out_of_stock_notification,
                        notifications=notifications,
                    ),
                ),
            }
        ),
    )

    uow = providers.Factory(
        SqlAlchemyUnitOfWork,
        engine=engine,
        inline=inline_handlers,
        after_commit=after_commit_handlers,
    )
    delivery = providers.Singleton(
        Delivery,
        uow_factory=uow.provider,
        handlers=after_commit_handlers,
        backoff=providers.Singleton(Backoff),
    )
    command_handlers = providers.Dict(
        {
            commands.CreateBatch: providers.Object(handlers.add_batch),
            commands.Allocate: providers.Object(handlers.allocate),
            commands.ChangeBatchQuantity: providers.Object(handlers.change_batch_quantity),
        }
    )
    bus = providers.Factory(
        MessageBus,
        uow_factory=uow.provider,
        command_handlers=command_handlers,
        retry=retry,
        delivery=delivery,
    )
    relay = providers.Singleton(Relay, delivery=delivery, settings=relay_settings)


_ASYNC_RESOURCES = ("engine", "read_engine", "replica_engine", "redis")


async def start(container: Container) -> None:
    """Open the container's resources (nothing connects before this)."""
    await container.init_resources()  # type: ignore[misc]
    # Once an async resource is open, dependency-injector would still answer
    # every provider that depends on it with a Future; switch that off so the
    # rest of the graph stays plain.
    for name in _ASYNC_RESOURCES:
        getattr(container, name).disable_async_mode()


async def stop(container: Container) -> None:
    for name in _ASYNC_RESOURCES:
        getattr(container, name).enable_async_mode()
    await container.shutdown_resources()  # type: ignore[misc]
