"""A database that cannot be reached: told apart from a bad request, never retried in a loop.

The errors are built as the driver and SQLAlchemy raise them: asyncpg's
exception, under SQLAlchemy's adapted DBAPI error, under the DBAPIError the
caller sees.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Self

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.adapters.database_errors import (
    DatabaseUnavailable,
    is_retryable,
    is_unavailable,
    unavailable_reason,
)
from app.backoff import Backoff
from app.domain import commands, events
from app.service_layer import handlers
from app.service_layer.delivery import Delivery
from app.service_layer.messagebus import MessageBus, RetryPolicy
from app.service_layer.relay import Relay, RelaySettings
from tests.support.fakes import FakeStore, FakeUnitOfWork
from tests.support.polling import eventually
from tests.support.refs import random_ref

SQL = "SELECT products.sku FROM products WHERE products.sku = $1::VARCHAR"


def wrapped(driver_error: Exception, kind: type[DBAPIError] = DBAPIError) -> DBAPIError:
    """``driver_error`` as it reaches the caller through SQLAlchemy."""
    adapted = Exception(str(driver_error))
    adapted.__cause__ = driver_error
    error = kind(SQL, ("sku-1",), adapted)
    error.__cause__ = adapted
    return error


def invalidated(driver_error: Exception) -> DBAPIError:
    error = wrapped(driver_error, InterfaceError)
    error.connection_invalidated = True
    return error


UNAVAILABLE = [
    ConnectionRefusedError(111, "Connection refused"),
    ConnectionResetError(104, "Connection reset by peer"),
    TimeoutError(),
    PoolTimeout("QueuePool limit of size 10 overflow 0 reached, connection timed out"),
    wrapped(asyncpg.CannotConnectNowError("the database system is starting up")),
    wrapped(asyncpg.AdminShutdownError("terminating connection due to administrator command")),
    wrapped(
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
    ),
    wrapped(asyncpg.TooManyConnectionsError("sorry, too many clients already")),
    invalidated(asyncpg.InterfaceError("connection is closed")),
    asyncpg.InterfaceError("connection is closed"),  # the read path meets it unwrapped
    # An idle pooled connection that took the server's shutdown notice before
    # its socket closed: the next query finds it still "consuming an error".
    asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
    wrapped(ConnectionRefusedError(111, "Connection refused"), OperationalError),
]
NOT_UNAVAILABLE = [
    ValueError("not a database error"),
    asyncpg.InterfaceError("the server expects 2 arguments for this query, 1 was passed"),
    wrapped(asyncpg.UniqueViolationError("duplicate key value"), IntegrityError),
    wrapped(asyncpg.SerializationError("could not serialize access")),
    wrapped(asyncpg.UndefinedTableError('relation "products" does not exist')),
]


@pytest.mark.parametrize("error", UNAVAILABLE, ids=lambda e: type(e).__name__)
def test_errors_of_an_unreachable_database_count_as_unavailable(error: Exception) -> None:
    assert is_unavailable(error)
    assert not is_retryable(error)  # not a collision: running it again at once would not help


@pytest.mark.parametrize("error", NOT_UNAVAILABLE, ids=lambda e: type(e).__name__)
def test_other_errors_do_not(error: Exception) -> None:
    assert not is_unavailable(error)


def test_the_reason_is_the_drivers_one_line_without_sql() -> None:
    error = wrapped(asyncpg.CannotConnectNowError("the database system is starting up"))

    assert unavailable_reason(error) == "CannotConnectNowError: the database system is starting up"
    assert unavailable_reason(TimeoutError()) == "TimeoutError"


class UnreachableUnitOfWork(FakeUnitOfWork):
    """A unit of work whose database is away while ``store.down`` says so."""

    def __init__(self, store: DownStore) -> None:
        super().__init__(store)
        self.down = store

    async def __aenter__(self) -> Self:
        self.down.attempts += 1
        if self.down.away:
            raise DatabaseUnavailable("ConnectionRefusedError: [Errno 111] Connection refused")
        return await super().__aenter__()


class DownStore(FakeStore):
    def __init__(self) -> None:
        super().__init__()
        self.away = False
        self.attempts = 0  # units of work begun


def delivery_on(store: DownStore, published: list[str]) -> Delivery:
    async def publish(event: events.Event) -> None:
        published.append(event.id)

    return Delivery(
        uow_factory=lambda: UnreachableUnitOfWork(store),
        handlers={events.Allocated: {"publish_allocated_event": publish}},
    )


def bus_on(store: DownStore) -> MessageBus:
    return MessageBus(
        uow_factory=lambda: UnreachableUnitOfWork(store),
        command_handlers={commands.CreateBatch: handlers.add_batch},
        retry=RetryPolicy(attempts=5, backoff=Backoff(0.0001, 0.001, jitter=True)),
        delivery=delivery_on(store, []),
    )


async def test_the_bus_does_not_retry_a_write_while_the_database_is_away() -> None:
    store = DownStore()
    store.away = True

    with pytest.raises(DatabaseUnavailable):
        await bus_on(store).handle(commands.CreateBatch(random_ref("batch"), "sku", 10))

    assert store.attempts == 1


async def test_the_relay_lives_through_an_outage_says_so_once_and_delivers_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="app.outages")
    store = DownStore()
    ref, sku = random_ref("batch"), random_ref("sku")
    # an event the outage left undelivered
    late = events.Allocated(orderid=random_ref("o"), sku=sku, qty=1, batchref=ref, version=1)
    await store.outbox.add([late])
    published: list[str] = []
    relay = Relay(delivery_on(store, published), RelaySettings(poll_interval=0.01))
    store.away = True
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await eventually(lambda: store.attempts >= 20, 5.0, "20 attempts on the store")
        assert not task.done()
        assert not store.outbox.rows[late.id].completed

        store.away = False
        await eventually(
            lambda: store.outbox.rows[late.id].completed, 5.0, "the late event delivered"
        )
        assert published == [late.id]
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)

    messages = [r.getMessage() for r in caplog.records if r.name == "app.outages"]
    assert [m.split(" (")[0].split(" after ")[0] for m in messages] == [
        "database unavailable",
        "database available again",
    ]
    assert not [r for r in caplog.records if r.exc_info]
