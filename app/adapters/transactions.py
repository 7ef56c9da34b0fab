"""Transactions: the one way writes reach the database.

A ``Transaction`` is one transaction on one connection of the writer
engine, opened at its first statement. It runs Core statements built once.
On PostgreSQL they run on the asyncpg connection itself (app.adapters.driver),
as the reads do: SQLAlchemy's execution layer would cost more CPU than the
write's own work; writes whose result nothing waits for go together as one
statement (app.adapters.write_batch). On SQLite they go through SQLAlchemy,
which holds the write lock from the first statement (BEGIN IMMEDIATE).

The engine is one of ``engines.build_engine``'s: its pool takes a driver
connection back with no I/O, which a pool that closes connections on return
(NullPool) would need to do from SQLAlchemy's own async bridge.
"""

import abc
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql.base import Executable

from app.adapters import write_batch
from app.adapters.database_errors import is_unavailable
from app.adapters.driver import Params, arguments, compiled, discard


class Transaction(abc.ABC):
    """One transaction on one connection of the writer engine, opened at its first statement."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @abc.abstractmethod
    async def execute(self, statement: Executable, params: Params | None = None) -> int:
        """Run ``statement``; returns how many rows it touched."""

    @abc.abstractmethod
    async def write(
        self,
        statement: Executable,
        params: Params | None = None,
        *,
        expect: int | None = None,
        stale: str = "",
    ) -> None:
        """Run ``statement`` before the transaction's next read, or its commit.

        For writes whose result nothing waits for: on PostgreSQL those held
        back go together, as one statement (app.adapters.write_batch). With
        ``expect``, a write that touches another number of rows raises
        StaleDataError(``stale``) then: a concurrent write got in the way.
        """

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


@contextlib.asynccontextmanager
async def committed(engine: AsyncEngine) -> AsyncIterator[Transaction]:
    """A transaction of its own for the block: committed if the block ends, else rolled back."""
    tx = transaction(engine)
    try:
        yield tx
        await tx.commit()
    finally:
        await tx.close()


def transaction(engine: AsyncEngine) -> Transaction:
    if engine.dialect.name == "postgresql":
        return _AsyncpgTransaction(engine)
    return _SqliteTransaction(engine)  # through SQLAlchemy


class _SqliteTransaction(Transaction):
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

    async def write(
        self,
        statement: Executable,
        params: Params | None = None,
        *,
        expect: int | None = None,
        stale: str = "",
    ) -> None:
        touched = await self.execute(statement, params)
        if expect is not None and touched != expect:
            raise StaleDataError(stale)

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


@dataclass(frozen=True)
class _Held:
    statement: Executable
    params: Params
    expect: int | None
    stale: str


class _AsyncpgTransaction(Transaction):
    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self._raw: PoolProxiedConnection | None = None
        self._driver: Any = None
        self._open = False
        self._held: list[_Held] = []
        self._held_tables: set[str] = set()

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
        await self._flush()
        return await self._execute(statement, params or {})

    async def _execute(self, statement: Executable, params: Params) -> int:
        driver = await self._connection()
        sql = compiled(statement, self.engine.dialect)
        status: str = await self._run(driver.execute, sql.sql, *arguments(sql, params))
        count = status.rsplit(" ", 1)[-1]
        return int(count) if count.isdigit() else 0

    async def write(
        self,
        statement: Executable,
        params: Params | None = None,
        *,
        expect: int | None = None,
        stale: str = "",
    ) -> None:
        tables = write_batch.tables_of(statement)
        if not self._held_tables.isdisjoint(tables):
            await self._flush()
        self._held.append(_Held(statement, params or {}, expect, stale))
        self._held_tables |= tables

    async def _flush(self) -> None:
        """Send the writes held back: one alone, several as one statement."""
        held, self._held = self._held, []
        self._held_tables = set()
        if not held:
            return
        if len(held) == 1:
            touched = [await self._execute(held[0].statement, held[0].params)]
        else:
            statement = write_batch.combined(tuple(h.statement for h in held))
            sql = compiled(statement, self.engine.dialect)
            params = {
                write_batch.prefix(index) + name: value
                for index, h in enumerate(held)
                for name, value in h.params.items()
            }
            driver = await self._connection()
            [row] = await self._run(driver.fetch, sql.sql, *arguments(sql, params))
            touched = list(row)
        for h, count in zip(held, touched, strict=True):
            if h.expect is not None and count != h.expect:
                raise StaleDataError(h.stale)

    async def execute_many(self, statement: Executable, rows: Sequence[Params]) -> None:
        await self._flush()
        driver = await self._connection()
        sql = compiled(statement, self.engine.dialect)
        await self._run(driver.executemany, sql.sql, [arguments(sql, row) for row in rows])

    async def fetch(self, statement: Executable, params: Params | None = None) -> Sequence[Any]:
        await self._flush()
        driver = await self._connection()
        sql = compiled(statement, self.engine.dialect)
        rows: Sequence[Any] = await self._run(driver.fetch, sql.sql, *arguments(sql, params or {}))
        return rows

    async def commit(self) -> None:
        await self._flush()
        if self._open:
            await self._run(self._driver.execute, "COMMIT")
            self._open = False

    async def close(self) -> None:
        self._held, self._held_tables = [], set()
        raw, self._raw, self._driver = self._raw, None, None
        if raw is None:
            return
        try:
            if self._open:
                self._open = False
                await raw.driver_connection.execute("ROLLBACK")  # type: ignore[union-attr, unused-ignore]
        except BaseException as e:
            discard(self.engine, raw, e)
            raise
        finally:
            raw.close()
