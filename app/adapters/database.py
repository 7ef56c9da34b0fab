"""Engines: how the service talks to SQLite and PostgreSQL."""

import abc
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeAlias

import asyncpg  # type: ignore[import-untyped]
import orjson
from sqlalchemy import Table, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.sql.base import Executable

# serialization_failure, deadlock_detected, lock_not_available
_RETRYABLE_SQLSTATES = {"40001", "40P01", "55P03"}
# admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections,
# query_canceled (statement_timeout: the server gave up at DB_TIMEOUT, as the
# client would have); and every connection_exception (class 08)
_UNAVAILABLE_SQLSTATES = {"57P01", "57P02", "57P03", "53300", "57014"}

Params: TypeAlias = Mapping[str, Any]


class ConcurrencyError(Exception):
    """A concurrent write got in the way; running the message again may succeed."""


class DatabaseUnavailable(Exception):
    """The database cannot be reached now; nothing was committed, or it is unknown whether.

    Not a collision: running the message again at once would fail the same
    way, so it is not retried here; the caller may try again shortly.
    """


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
    if engine.dialect.name == "sqlite":
        _tune_sqlite(engine, writer=writer)
    else:
        _abort_invalidated(engine)
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


async def ping(engine: AsyncEngine) -> None:
    """``SELECT 1`` on a pooled connection; raises if the database does not answer.

    On PostgreSQL it runs on the driver's connection, like the reads, so that
    a connection that hangs is closed at once when the caller's timeout
    cancels it (SQLAlchemy would first try to close it politely, waiting on
    the server that does not answer).
    """
    if engine.dialect.name != "postgresql":
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return
    raw = await engine.raw_connection()
    try:
        await raw.driver_connection.fetchval("SELECT 1")  # type: ignore[union-attr]
    except BaseException as e:
        discard(engine, raw, e)
        raise
    finally:
        raw.close()


async def fetch(
    engine: AsyncEngine, statement: Executable | str, params: Params | None = None
) -> Sequence[Any]:
    """The rows of one read-only statement, outside any transaction (a reader engine).

    On PostgreSQL the statement runs on the asyncpg connection taken straight
    from SQLAlchemy's pool: a reader engine runs in autocommit with no reset on
    return, so handing the connection back involves no I/O. A ``str`` is SQL
    with asyncpg's ``$1``-style parameters, taken from ``params`` in order.
    """
    params = params or {}
    if engine.dialect.name != "postgresql":
        query = text(statement) if isinstance(statement, str) else statement
        async with engine.connect() as conn:
            rows: Sequence[Any] = (await conn.execute(query, params)).all()
            return rows
    if isinstance(statement, str):
        sql, args = statement, list(params.values())
    else:
        done = compiled(statement, engine.dialect)
        sql, args = done.sql, _args(done, params)
    raw = await engine.raw_connection()
    try:
        rows = await raw.driver_connection.fetch(sql, *args)  # type: ignore[union-attr]
    except BaseException as e:
        discard(engine, raw, e)
        raise
    finally:
        raw.close()
    return rows


def discard(engine: AsyncEngine, raw: PoolProxiedConnection, exc: BaseException) -> None:
    """Take a connection that failed with ``exc`` out of the pool, without waiting on it.

    If the server closed it, it closed the pool's others too: they are all
    replaced on their next checkout, as SQLAlchemy does when it sees a
    disconnect on its own path.
    """
    if raw.driver_connection.is_closed():  # type: ignore[union-attr]
        engine.sync_engine.pool._invalidate(raw, exc)
    else:
        raw.invalidate(exc)


def _abort_invalidated(engine: AsyncEngine) -> None:
    # SQLAlchemy closes a connection it gives up on politely, waiting up to
    # two seconds for the server; after a timeout the server is not
    # answering. Drop it instead: the server rolls back when it notices.
    @event.listens_for(engine.sync_engine, "invalidate")
    def _invalidate(_: Any, record: ConnectionPoolEntry, __: BaseException | None) -> None:
        record.driver_connection.terminate()  # type: ignore[union-attr]


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
    for e in _chain(exc):
        if isinstance(e, StaleDataError | IntegrityError):
            return True
        sqlstate = getattr(e, "sqlstate", None)
        if isinstance(sqlstate, str) and (
            sqlstate in _RETRYABLE_SQLSTATES or sqlstate.startswith("23")
        ):
            return True
        if isinstance(e, DBAPIError) and "database is locked" in str(e.orig):
            return True
    return False


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database cannot be reached now, not that the work is wrong.

    A connection refused, reset or closed under us, a server shutting down or
    starting up, no connection from the pool or no answer within the timeout.
    Running the same work once the database is back would succeed.
    """
    for e in _chain(exc):
        if isinstance(e, OSError | PoolTimeout | DisconnectionError):
            return True  # OSError: refused, reset, unreachable, and TimeoutError
        if isinstance(e, DBAPIError) and e.connection_invalidated:
            return True
        sqlstate = getattr(e, "sqlstate", None)
        if isinstance(sqlstate, str) and (
            sqlstate.startswith("08") or sqlstate in _UNAVAILABLE_SQLSTATES
        ):
            return True
        if isinstance(e, asyncpg.InterfaceError) and "connection is closed" in str(e):
            return True
        if isinstance(e, asyncpg.InternalClientError):
            # The connection's protocol state is broken, as when the server's
            # shutdown notice reached an idle pooled connection before its
            # socket closed; a fresh connection is the remedy.
            return True
    return False


def unavailable_reason(exc: BaseException) -> str:
    """The driver's own word on why, one line, without SQL: for logs."""
    # the innermost cause, but a timeout rather than the cancellation under it
    root = [e for e in _chain(exc) if isinstance(e, Exception)][-1]
    text = str(root).strip().splitlines()
    return f"{type(root).__name__}: {text[0]}" if text else type(root).__name__


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what caused it, through SQLAlchemy's wrapping, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        orig = current.orig if isinstance(current, DBAPIError) else None
        current = current.__cause__ or (orig if isinstance(orig, BaseException) else None)


class Transaction(abc.ABC):
    """One transaction on one connection of the writer engine, opened at its first statement.

    It runs Core statements built once. On PostgreSQL they are compiled once
    per process and run on the asyncpg connection itself, as the reads are:
    SQLAlchemy's execution layer would cost more CPU than the write's own
    work. On SQLite they go through SQLAlchemy, which holds the write lock
    from the first statement (BEGIN IMMEDIATE).
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @abc.abstractmethod
    async def execute(self, statement: Executable, params: Params | None = None) -> int:
        """Run ``statement``; returns how many rows it touched."""

    @abc.abstractmethod
    async def execute_many(self, statement: Executable, rows: Sequence[Params]) -> None: ...

    @abc.abstractmethod
    async def fetch(self, statement: Executable, params: Params | None = None) -> Sequence[Any]:
        """The rows ``statement`` returns, each indexable by position."""

    async def scalar(self, statement: Executable, params: Params | None = None) -> Any:
        rows = await self.fetch(statement, params)
        return rows[0][0] if rows else None

    @abc.abstractmethod
    async def commit(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None:
        """Roll back what was not committed, and give the connection back."""


def transaction(engine: AsyncEngine) -> Transaction:
    if engine.dialect.name == "postgresql":
        return _AsyncpgTransaction(engine)
    return _SqlAlchemyTransaction(engine)


class _SqlAlchemyTransaction(Transaction):
    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self._conn: AsyncConnection | None = None

    async def _connection(self) -> AsyncConnection:
        if self._conn is None:
            self._conn = await self.engine.connect()
            await self._conn.begin()
        return self._conn

    async def execute(self, statement: Executable, params: Params | None = None) -> int:
        conn = await self._connection()
        result = await conn.execute(statement, params)
        return int(result.rowcount)

    async def execute_many(self, statement: Executable, rows: Sequence[Params]) -> None:
        conn = await self._connection()
        await conn.execute(statement, [dict(row) for row in rows])

    async def fetch(self, statement: Executable, params: Params | None = None) -> Sequence[Any]:
        conn = await self._connection()
        rows: Sequence[Any] = (await conn.execute(statement, params)).all()
        return rows

    async def commit(self) -> None:
        if self._conn is not None:
            await self._conn.commit()

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()  # rolls back what is uncommitted


class _AsyncpgTransaction(Transaction):
    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self._raw: PoolProxiedConnection | None = None
        self._driver: Any = None
        self._open = False

    async def _connection(self) -> Any:
        if self._driver is None:
            self._raw = await self.engine.raw_connection()
            self._driver = self._raw.driver_connection
        if not self._open:
            # Also after a commit: a statement never runs outside a transaction.
            await self._run(self._driver.execute, "BEGIN")
            self._open = True
        return self._driver

    async def _run(self, method: Any, *args: Any) -> Any:
        try:
            return await method(*args)
        except BaseException as e:
            if self._raw is not None and (is_unavailable(e) or not isinstance(e, Exception)):
                # A connection cut or cancelled mid-statement is not given back.
                discard(self.engine, self._raw, e)
                self._open = False
            raise

    async def execute(self, statement: Executable, params: Params | None = None) -> int:
        driver = await self._connection()
        sql = compiled(statement, self.engine.dialect)
        status: str = await self._run(driver.execute, sql.sql, *_args(sql, params or {}))
        count = status.rsplit(" ", 1)[-1]
        return int(count) if count.isdigit() else 0

    async def execute_many(self, statement: Executable, rows: Sequence[Params]) -> None:
        driver = await self._connection()
        sql = compiled(statement, self.engine.dialect)
        await self._run(driver.executemany, sql.sql, [_args(sql, row) for row in rows])

    async def fetch(self, statement: Executable, params: Params | None = None) -> Sequence[Any]:
        driver = await self._connection()
        sql = compiled(statement, self.engine.dialect)
        rows: Sequence[Any] = await self._run(driver.fetch, sql.sql, *_args(sql, params or {}))
        return rows

    async def commit(self) -> None:
        if self._open:
            await self._run(self._driver.execute, "COMMIT")
            self._open = False

    async def close(self) -> None:
        raw, self._raw, self._driver = self._raw, None, None
        if raw is None:
            return
        try:
            if self._open:
                self._open = False
                await raw.driver_connection.execute("ROLLBACK")  # type: ignore[union-attr]
        except BaseException as e:
            discard(self.engine, raw, e)
            raise
        finally:
            raw.close()


@dataclass(frozen=True)
class Compiled:
    sql: str
    names: tuple[str, ...]  # of the parameters, in order
    defaults: dict[str, Any]  # values the statement itself gives


@cache
def compiled(statement: Executable, dialect: Dialect) -> Compiled:
    """``statement`` as asyncpg runs it: its SQL and its parameters' names, once per process."""
    done = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
    names = tuple(done.positiontup or ())
    defaults = {
        name: done.binds[name].value
        for name in names
        if done.binds[name].value is not None or not done.binds[name].required
    }
    return Compiled(str(done), names, defaults)


def _args(statement: Compiled, params: Mapping[str, Any]) -> list[Any]:
    values = [params[n] if n in params else statement.defaults[n] for n in statement.names]
    # JSON columns: the dialect's codec for asyncpg takes the text.
    return [orjson.dumps(v).decode() if isinstance(v, dict | list) else v for v in values]


def insert_on_conflict(table: Table, dialect_name: str) -> postgresql.Insert | sqlite.Insert:
    """An INSERT into ``table`` that takes ON CONFLICT clauses, in the dialect's construct."""
    if dialect_name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)
