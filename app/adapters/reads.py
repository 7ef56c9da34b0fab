"""Reads: the rows of one statement, outside any transaction, on a reader engine.

The one way reads reach the database (the views, the read source's
positions, ``/ready``'s ping). On PostgreSQL the statement runs on the
asyncpg connection taken straight from SQLAlchemy's pool: a reader engine
runs in autocommit with no reset on return, so handing the connection back
involves no I/O. On SQLite it goes through SQLAlchemy.
"""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.base import Executable

from app.adapters.driver import Params, arguments, borrowed, compiled


async def fetch(
    engine: AsyncEngine, statement: Executable | str, params: Params | None = None
) -> Sequence[Any]:
    """The rows of ``statement``, each indexable by position.

    A ``str`` is SQL with asyncpg's ``$1``-style parameters, taken from
    ``params`` in order.
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
        sql, args = done.sql, arguments(done, params)
    async with borrowed(engine) as driver:
        rows = await driver.fetch(sql, *args)
    return rows


async def ping(engine: AsyncEngine) -> None:
    """``SELECT 1``; raises if the database does not answer.

    On PostgreSQL a connection that hangs is closed at once when the caller's
    timeout cancels it (SQLAlchemy would first try to close it politely,
    waiting on the server that does not answer).
    """
    await fetch(engine, "SELECT 1")
