"""Statements on PostgreSQL's driver connection, under SQLAlchemy's pool.

Reads and writes on PostgreSQL run on the asyncpg connection itself: a
statement is compiled once per process (``compiled``), its parameters put in
order (``arguments``), and it runs on a connection borrowed from SQLAlchemy's
pool (``borrowed``), which is given back after, or taken out of the pool if
the statement failed in a way that leaves it unusable.
"""

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeAlias

import orjson
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql.base import Executable

from app.adapters.engines import replace_pool

Params: TypeAlias = Mapping[str, Any]


@contextlib.asynccontextmanager
async def borrowed(engine: AsyncEngine) -> AsyncIterator[Any]:
    """The driver connection of one of ``engine``'s pooled connections, for a while.

    An error within discards it (``discard``) before it goes back.
    """
    raw = await engine.raw_connection()
    try:
        yield raw.driver_connection
    except BaseException as e:
        discard(engine, raw, e)
        raise
    finally:
        raw.close()


def discard(engine: AsyncEngine, raw: PoolProxiedConnection, exc: BaseException) -> None:
    """Take a connection that failed with ``exc`` out of the pool, without waiting on it.

    If the server closed it, it closed the pool's others too: they are all
    replaced before their next use (``engines.replace_pool``).
    """
    if raw.driver_connection.is_closed():  # type: ignore[union-attr, unused-ignore]
        replace_pool(engine)
    raw.invalidate(exc)


@dataclass(frozen=True)
class Compiled:
    sql: str
    names: tuple[str, ...]  # of the parameters, in order
    defaults: dict[str, Any]  # values the statement itself gives


@cache
def compiled(statement: Executable, dialect: Dialect) -> Compiled:
    """``statement`` as asyncpg runs it: its SQL and its parameters' names, once per process."""
    done = statement.compile(dialect=dialect)  # type: ignore[attr-defined, unused-ignore]
    names = tuple(done.positiontup or ())
    defaults = {
        name: done.binds[name].value
        for name in names
        if done.binds[name].value is not None or not done.binds[name].required
    }
    return Compiled(str(done), names, defaults)


def arguments(statement: Compiled, params: Mapping[str, Any]) -> list[Any]:
    values = [params[n] if n in params else statement.defaults[n] for n in statement.names]
    # JSON columns: the dialect's codec for asyncpg takes the text.
    return [orjson.dumps(v).decode() if isinstance(v, dict | list) else v for v in values]
