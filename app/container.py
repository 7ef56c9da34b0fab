"""The composition root: every collaborator, its lifetime, and what it is given."""

from functools import partial

from dependency_injector import containers, providers
from sqlalchemy.ext.asyncio import async_sessionmaker

from app.adapters import database
from app.adapters.notifications import LogNotifications
from app.config import Settings
from app.domain import commands, events
from app.service_layer import handlers
from app.service_layer.messagebus import MessageBus, RetryPolicy
from app.service_layer.unit_of_work import SqlAlchemyUnitOfWork


class Container(containers.DeclarativeContainer):
    settings = providers.Singleton(Settings)

    engine = providers.Resource(
        database.engine_resource,
        url=settings.provided.database_url,
        pool_size=settings.provided.db_pool_size,
        writer=True,
    )
    read_engine = providers.Resource(
        database.engine_resource,
        url=settings.provided.effective_read_database_url,
        pool_size=settings.provided.db_pool_size,
        writer=False,
    )
    session_factory = providers.Singleton(async_sessionmaker, engine, expire_on_commit=False)
    notifications = providers.Singleton(LogNotifications)
    retry = providers.Singleton(RetryPolicy, attempts=settings.provided.write_retries)

    uow = providers.Factory(SqlAlchemyUnitOfWork, session_factory=session_factory)

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
                providers.Object(handlers.update_batch_read_model),
            ),
            events.Deallocated: providers.List(
                providers.Object(handlers.remove_allocation_from_read_model),
                providers.Object(handlers.update_batch_read_model),
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
    )


_ASYNC_RESOURCES = ("engine", "read_engine")


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
