"""The composition root: every collaborator, its lifetime, and what it is given."""

from collections.abc import AsyncIterator
from datetime import timedelta
from functools import partial

from dependency_injector import containers, providers
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import async_sessionmaker

from app.adapters import database
from app.adapters.dead_letters import RedisDeadLetters
from app.adapters.idempotency import SqlAlchemyIdempotencyKeys
from app.adapters.notifications import (
    AbstractNotifications,
    EmailNotifications,
    LogNotifications,
)
from app.adapters.publisher import AbstractPublisher, NoPublisher, RedisPublisher
from app.config import Settings
from app.domain import commands, events
from app.entrypoints.api.idempotency import Idempotency
from app.faults import Faults
from app.service_layer import handlers
from app.service_layer.messagebus import MessageBus, RetryPolicy
from app.service_layer.relay import Relay, RelaySettings
from app.service_layer.unit_of_work import SqlAlchemyUnitOfWork


async def redis_resource(url: str | None) -> AsyncIterator[Redis | None]:
    if url is None:
        yield None
        return
    client = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        yield client
    finally:
        await client.aclose()


def publisher(client: Redis | None, faults: Faults) -> AbstractPublisher:
    return NoPublisher() if client is None else RedisPublisher(client, faults)


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
        lease=timedelta(seconds=settings.outbox_lease),
        retention=timedelta(seconds=settings.outbox_retention),
    )


class Container(containers.DeclarativeContainer):
    settings = providers.Singleton(Settings)
    faults = providers.Singleton(Faults)  # armed by tests only

    engine = providers.Resource(
        database.engine_resource,
        url=settings.provided.database_url,
        pool_size=settings.provided.db_pool_size,
        writer=True,
        db_timeout=settings.provided.db_timeout,
    )
    read_engine = providers.Resource(
        database.engine_resource,
        url=settings.provided.effective_read_database_url,
        pool_size=settings.provided.db_pool_size,
        writer=False,
        db_timeout=settings.provided.db_timeout,
    )
    redis = providers.Resource(redis_resource, url=settings.provided.redis_url)

    session_factory = providers.Singleton(async_sessionmaker, engine, expire_on_commit=False)
    publisher = providers.Singleton(publisher, client=redis, faults=faults)
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

    uow = providers.Factory(
        SqlAlchemyUnitOfWork,
        session_factory=session_factory,
        faults=faults,
        lease=relay_settings.provided.lease,
    )

    command_handlers = providers.Dict(
        {
            commands.CreateBatch: providers.Object(handlers.add_batch),
            commands.Allocate: providers.Object(handlers.allocate),
            commands.ChangeBatchQuantity: providers.Object(handlers.change_batch_quantity),
        }
    )
    event_handlers = providers.Dict(
        {
            events.BatchCreated: providers.List(
                providers.Object(handlers.update_batch_read_model),
            ),
            events.BatchQuantityChanged: providers.List(
                providers.Object(handlers.update_batch_read_model),
            ),
            events.Allocated: providers.List(
                providers.Object(handlers.add_allocation_to_read_model),
                providers.Factory(partial, handlers.publish_allocated_event, publisher=publisher),
            ),
            events.Deallocated: providers.List(
                providers.Object(handlers.remove_allocation_from_read_model),
                providers.Object(handlers.reallocate),
            ),
            events.OutOfStock: providers.List(
                providers.Factory(
                    partial,
                    handlers.send_out_of_stock_notification,
                    notifications=notifications,
                ),
            ),
        }
    )

    bus = providers.Factory(
        MessageBus,
        uow_factory=uow.provider,
        command_handlers=command_handlers,
        event_handlers=event_handlers,
        retry=retry,
        faults=faults,
        lease=relay_settings.provided.lease,
    )
    relay = providers.Singleton(
        Relay, uow_factory=uow.provider, bus_factory=bus.provider, settings=relay_settings
    )


_ASYNC_RESOURCES = ("engine", "read_engine", "redis")


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
