"""Engines: how the service talks to SQLite and PostgreSQL."""

from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm.exc import StaleDataError

# serialization_failure, deadlock_detected, lock_not_available
_RETRYABLE_SQLSTATES = {"40001", "40P01", "55P03"}


def build_engine(url: str, *, pool_size: int = 10, writer: bool = True) -> AsyncEngine:
    """An engine for ``url``; nothing connects until it is first used."""
    options: dict[str, Any] = {"pool_pre_ping": False}
    if make_url(url).get_backend_name() == "sqlite":
        options["connect_args"] = {"timeout": 30}
    else:
        # A fixed pool: requests beyond it wait for a connection, as they
        # would in asyncpg's own pool, instead of opening (and closing again)
        # a connection each.
        options.update(pool_size=pool_size, max_overflow=0)
        if not writer:
            # Reads are single statements: no BEGIN, no ROLLBACK on return to
            # the pool, a third of the round trips.
            options.update(isolation_level="AUTOCOMMIT", pool_reset_on_return=None)
    engine = create_async_engine(url, **options)
    if engine.dialect.name == "sqlite":
        _tune_sqlite(engine, writer=writer)
    return engine


async def engine_resource(url: str, pool_size: int, writer: bool) -> AsyncIterator[AsyncEngine]:
    engine = build_engine(url, pool_size=pool_size, writer=writer)
    try:
        yield engine
    finally:
        await engine.dispose()


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


def is_retryable(exc: BaseException) -> bool:
    """Whether ``exc`` is a write colliding with a concurrent one.

    Integrity errors count: two requests creating the same row at once is a
    collision, and the handler run again sees the other's row.
    """
    if isinstance(exc, StaleDataError | IntegrityError):
        return True
    if isinstance(exc, DBAPIError):
        cause = exc.orig.__cause__ if exc.orig is not None else None
        sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(cause, "sqlstate", None)
        if sqlstate in _RETRYABLE_SQLSTATES:
            return True
        return "database is locked" in str(exc.orig)
    return False
