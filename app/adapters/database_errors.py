"""What a database error means: a collision to retry, an outage, or the work's own fault.

The service decides three things from an exception, through SQLAlchemy's
wrapping and the driver's: whether running the message again may succeed
(``is_retryable``: a concurrent write got in the way), whether the database
cannot be reached now (``is_unavailable``: a 503, not a 500), and whether
the transaction is lost with it (``is_database_error``).
"""

from collections.abc import Iterator

import asyncpg  # type: ignore[import-untyped, unused-ignore]
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm.exc import StaleDataError

from app.adapters.unavailable import Unavailable

# serialization_failure, deadlock_detected, lock_not_available
_RETRYABLE_SQLSTATES = {"40001", "40P01", "55P03"}
# admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections,
# query_canceled (statement_timeout: the server gave up at DB_TIMEOUT, as the
# client would have); and every connection_exception (class 08)
_UNAVAILABLE_SQLSTATES = {"57P01", "57P02", "57P03", "53300", "57014"}


class ConcurrencyError(Exception):
    """A concurrent write got in the way; running the message again may succeed."""


class DatabaseUnavailable(Unavailable):
    """The database cannot be reached now; nothing was committed, or it is unknown whether.

    Not a collision: running the message again at once would fail the same
    way, so it is not retried here; the caller may try again shortly.
    """

    dependency = "database"


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


def is_database_error(exc: BaseException) -> bool:
    """Whether ``exc`` came from the database or the way to it: its transaction is lost.

    A statement that failed on PostgreSQL aborts the whole transaction, so
    whatever shares it fails with it; anything else a handler raises is its own.
    """
    from_database = (
        SQLAlchemyError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        OSError,
        ConcurrencyError,
        DatabaseUnavailable,
    )
    return any(isinstance(e, from_database) for e in _chain(exc)) or is_unavailable(exc)


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
