"""Engines: one per database the service uses, built as it needs them.

SQLite and PostgreSQL each get what they need of SQLAlchemy's engine: a
writer on SQLite takes the database's write lock at its first statement; on
PostgreSQL each wait is bounded by ``DB_TIMEOUT``, and a connection given up
on is dropped, not closed politely.
"""

import weakref
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from app import tracing


def build_engine(
    url: str, *, pool_size: int = 10, writer: bool = True, db_timeout: float | None = None
) -> AsyncEngine:
    """An engine for ``url``; nothing connects until it is first used.

    ``db_timeout`` (PostgreSQL) bounds each wait on the database: to connect, for
    a connection from the pool, for a statement's answer. None waits as long
    as it takes, for migrations and tests.
    """
    options: dict[str, Any] = {"pool_pre_ping": False}
    if make_url(url).get_backend_name() == "sqlite":
        options["connect_args"] = {"timeout": 30}
    else:
        # A fixed pool: requests beyond it wait for a connection, as they
        # would in asyncpg's own pool, instead of opening (and closing again)
        # a connection each.
        options.update(pool_size=pool_size, max_overflow=0)
        if db_timeout is not None:
            options.update(
                pool_timeout=db_timeout,
                connect_args={
                    "timeout": db_timeout,
                    "command_timeout": db_timeout,
                    # The server gives up too: a statement the client stopped
                    # waiting for is not left running (cancelled, or on a
                    # connection that was dropped).
                    "server_settings": {"statement_timeout": str(round(db_timeout * 1000))},
                },
            )
        if not writer:
            # Reads are single statements: no BEGIN, no ROLLBACK on return to
            # the pool, a third of the round trips.
            options.update(isolation_level="AUTOCOMMIT", pool_reset_on_return=None)
    engine = create_async_engine(url, **options)
    tracing.instrument(engine)
    if engine.dialect.name == "sqlite":
        _tune_sqlite(engine, writer=writer)
    else:
        _abort_invalidated(engine)
        _replaced_when_told(engine)
    return engine


async def engine_resource(
    url: str, pool_size: int, writer: bool, db_timeout: float | None = None
) -> AsyncIterator[AsyncEngine]:
    engine = build_engine(url, pool_size=pool_size, writer=writer, db_timeout=db_timeout)
    try:
        yield engine
    finally:
        await engine.dispose()


async def optional_engine_resource(
    url: str | None, pool_size: int, db_timeout: float | None = None
) -> AsyncIterator[AsyncEngine | None]:
    """A reader engine for ``url``, or None when there is none (no replica)."""
    if url is None:
        yield None
        return
    engine = build_engine(url, pool_size=pool_size, writer=False, db_timeout=db_timeout)
    try:
        yield engine
    finally:
        await engine.dispose()


def _abort_invalidated(engine: AsyncEngine) -> None:
    # SQLAlchemy closes a connection it gives up on politely, waiting up to
    # two seconds for the server; after a timeout the server is not
    # answering. Drop it instead: the server rolls back when it notices.
    @event.listens_for(engine.sync_engine, "invalidate")
    def _invalidate(_: Any, record: ConnectionPoolEntry, __: BaseException | None) -> None:
        record.driver_connection.terminate()  # type: ignore[union-attr, unused-ignore]


# Engines whose server closed a connection, so closed its others too.
_server_closed: weakref.WeakSet[Engine] = weakref.WeakSet()


def replace_pool(engine: AsyncEngine) -> None:
    """Have every connection ``engine``'s pool holds now replaced before it is used again.

    For when the server closed one: it closed the others too (a restart).
    The next checkout tells SQLAlchemy, which replaces them as it does when
    it sees a disconnect on its own path.
    """
    _server_closed.add(engine.sync_engine)


def _replaced_when_told(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "checkout")
    def _checkout(_: Any, __: ConnectionPoolEntry, ___: Any) -> None:
        if sync_engine in _server_closed:
            _server_closed.discard(sync_engine)
            raise InvalidatePoolError("the server closed a connection: replacing the pool's")


def _tune_sqlite(engine: AsyncEngine, *, writer: bool) -> None:
    # The driver's own transaction handling defers BEGIN and cannot take the
    # write lock up front; take over BEGIN so that a writer holds the lock
    # from its first read, as a PostgreSQL row lock would.
    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    begin = "BEGIN IMMEDIATE" if writer else "BEGIN"

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql(begin)
