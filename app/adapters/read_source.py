"""Where reads go: a streaming replica when there is one and it answers, else the primary.

With one database (no ``READ_DATABASE_URL``) every read goes to it, and a
write's ``Location`` is what it always was.

With a replica, a plain read goes to the replica and is as fresh as the
replica is. A write gives its client a *position*: where the primary's log
stood once the write had committed (``pg_current_wal_insert_lsn()``), read
after the commit. A read given that position (``?after=`` on the write's
``Location``) waits up to ``wait`` for the replica to have replayed that
far, and otherwise asks the primary: either way it sees the write.

A replica that fails or does not answer within half of ``timeout`` is left
alone: reads go to the primary at once until ``watch`` finds it healthy
again. No read waits longer than ``timeout`` (``DB_TIMEOUT``) in all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.base import Executable

from app import metrics, tracing
from app.adapters import database_errors, reads
from app.adapters.driver import Params

logger = logging.getLogger(__name__)

# The response header that gives a write's position.
CONSISTENCY_TOKEN = "X-Consistency-Token"
# A PostgreSQL log position as pg_lsn prints it: two hex numbers, "16/B374D848".
POSITION = re.compile(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}")

# How far the server has applied the log: a replica's replay position, or a
# primary's own (READ_DATABASE_URL may name the primary, through a pooler).
_REPLAYED = (
    "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
    " ELSE pg_current_wal_lsn() END >= $1::text::pg_lsn"
)
# Seconds behind the primary: 0 when everything received has been applied
# (an idle primary sends nothing, so the last replay's age alone would grow).
_LAG = (
    "SELECT CASE WHEN NOT pg_is_in_recovery()"
    " OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0"
    " ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)::float8 END"
)
_POLL = 0.01  # seconds between looks at the replica's progress


class ReadSource:
    def __init__(
        self,
        primary: AsyncEngine,
        replica: AsyncEngine | None = None,
        *,
        wait: float = 0.2,
        timeout: float = 5.0,
        check_interval: float = 1.0,
    ) -> None:
        self.primary = primary
        self.replica = replica
        self.replica_healthy = replica is not None
        self.replica_lag: float | None = None  # seconds, at the last check
        self._wait = wait
        self._timeout = timeout
        self._check_interval = check_interval

    async def fetch(
        self, statement: Executable, params: Params, after: str | None = None
    ) -> Sequence[Any]:
        """The rows of ``statement``, as fresh as position ``after`` at least, when given."""
        try:
            if self.replica is None:
                # One database: the engine's own timeouts bound the wait.
                return await reads.fetch(self.primary, statement, params)
            async with asyncio.timeout(self._timeout):
                if self.replica_healthy:
                    rows = await self._from_replica(self.replica, statement, params, after)
                    if rows is not None:
                        metrics.READS.labels("replica").inc()
                        return rows
                rows = await reads.fetch(self.primary, statement, params)
                metrics.READS.labels("primary").inc()
                return rows
        except TimeoutError as e:
            raise database_errors.DatabaseUnavailable(
                f"no answer within {self._timeout:g} s (DB_TIMEOUT)"
            ) from e
        except Exception as e:
            if database_errors.is_unavailable(e):
                raise database_errors.DatabaseUnavailable(
                    database_errors.unavailable_reason(e)
                ) from e
            raise

    async def position(self) -> str | None:
        """Where the primary's log stands now; None with one database, where it is not needed."""
        if self.replica is None:
            return None
        # The insert position: past the commit's own record even before that
        # is flushed (synchronous_commit off), which pg_current_wal_lsn() is not.
        rows = await reads.fetch(self.primary, "SELECT pg_current_wal_insert_lsn()::text")
        position: str = rows[0][0]
        return position

    async def _from_replica(
        self, replica: AsyncEngine, statement: Executable, params: Params, after: str | None
    ) -> Sequence[Any] | None:
        """The rows from the replica; None when it lags behind ``after`` or fails."""
        try:
            async with asyncio.timeout(self._timeout / 2):
                if after is not None and not await self._replayed(replica, after):
                    metrics.REPLICA_BEHIND.inc()
                    return None
                return await reads.fetch(replica, statement, params)
        except TimeoutError as e:
            self.replica_failed(e)
        except Exception as e:
            if not database_errors.is_unavailable(e):
                # A query the replica cancelled for recovery, say: ask the primary.
                logger.warning("read from the replica failed, asking the primary: %s", e)
                return None
            self.replica_failed(e)
        return None

    async def _replayed(self, replica: AsyncEngine, after: str) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait
        while True:
            rows = await reads.fetch(replica, _REPLAYED, {"after": after})
            if rows[0][0]:
                return True
            if loop.time() + _POLL > deadline:
                return False
            await asyncio.sleep(_POLL)

    def replica_failed(self, e: BaseException) -> None:
        """Send reads to the primary until ``watch`` finds the replica healthy."""
        if self.replica_healthy:
            reason = "no answer" if isinstance(e, TimeoutError) else str(e)
            logger.warning("replica unavailable (%s): reads go to the primary", reason)
        self.replica_healthy = False
        metrics.REPLICA_UP.set(0)
        metrics.changed()

    async def watch(self, stop: asyncio.Event) -> None:
        """Check the replica every ``check_interval``: its lag, and whether it is back."""
        replica = self.replica
        if replica is None:
            return
        while not stop.is_set():
            try:
                async with asyncio.timeout(self._timeout):
                    with tracing.quiet():
                        rows = await reads.fetch(replica, _LAG)
                lag = float(rows[0][0])
            except Exception as e:
                if database_errors.is_unavailable(e) or isinstance(e, TimeoutError):
                    self.replica_failed(e)
                else:
                    logger.exception("checking the replica failed")
            else:
                self.replica_lag = lag
                metrics.REPLICA_LAG.set(lag)
                metrics.REPLICA_UP.set(1)
                metrics.changed()
                if not self.replica_healthy:
                    logger.info("replica answers again: reads go to it")
                self.replica_healthy = True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._check_interval):
                    await stop.wait()
