"""Is the process that took something still alive? Asked of a claim nobody answered.

A process names itself (``me``) on what it claims, an Idempotency-Key's
reservation say, and anyone who finds the claim unanswered asks ``alive``:
a dead process's claim is taken over at once instead of waited out.

- On PostgreSQL each process holds, for its whole life, an advisory lock on
  a connection of its own: the server drops the lock the moment that
  connection closes, which it does when the process dies, however it dies.
  A process is alive while its lock is held (``pg_locks``).
- On SQLite, a file on this machine, every process is on this machine: a
  process is alive while its pid runs and started when it did.

``alive`` errs towards yes: an owner it cannot judge (a process elsewhere,
a name it does not know) counts as alive, and its claim goes stale by age.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import random
import socket
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters import reads

logger = logging.getLogger(__name__)

# The advisory locks' first key: this service's, apart from anyone else's.
NAMESPACE = 0x616C6C6F  # "allo"
RECONNECT_EVERY = 1.0  # seconds between attempts at taking the lock again
_HELD = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND classid = $1::int8::oid AND objid = $2::int8::oid AND objsubid = 2 AND granted)"
)


class Liveness(abc.ABC):
    me: str

    @abc.abstractmethod
    async def start(self) -> None:
        """Begin to be seen alive."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Be seen alive no longer (as if the process had died)."""

    @abc.abstractmethod
    async def alive(self, owner: str) -> bool: ...


class SessionLiveness(Liveness):
    """PostgreSQL: alive while an advisory lock of this process's own is held."""

    PREFIX = "session:"

    def __init__(self, engine: AsyncEngine, timeout: float = 5.0) -> None:
        self._engine = engine
        self._timeout = timeout
        self._key = random.randint(1, 2**31 - 1)
        self.me = f"{self.PREFIX}{self._key}"
        self._connection: Any = None
        self._keeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._lock()
        self._keeper = asyncio.create_task(self._keep(), name="liveness lock")

    async def stop(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        if self._connection is not None:
            self._connection.terminate()
            self._connection = None

    async def alive(self, owner: str) -> bool:
        if not owner.startswith(self.PREFIX):
            return True
        try:
            key = int(owner.removeprefix(self.PREFIX))
        except ValueError:
            return True
        if key == self._key:
            return True
        rows = await reads.fetch(self._engine, _HELD, {"classid": NAMESPACE, "objid": key})
        return bool(rows[0][0])

    async def _lock(self) -> None:
        url = self._engine.url.set(drivername="postgresql")
        connection = await asyncpg.connect(
            url.render_as_string(hide_password=False), timeout=self._timeout
        )
        # Another process drew the same key: draw again (as rare as two
        # processes of one database drawing one number in two billion).
        taken = "SELECT pg_try_advisory_lock($1, $2)"
        while not await connection.fetchval(taken, NAMESPACE, self._key):
            self._key = random.randint(1, 2**31 - 1)
            self.me = f"{self.PREFIX}{self._key}"
        self._connection = connection

    async def _keep(self) -> None:
        """Take the lock again if its connection is lost (a restart of the server)."""
        while True:
            await asyncio.sleep(RECONNECT_EVERY)
            if self._connection is not None and not self._connection.is_closed():
                continue
            # Meanwhile others take this process for dead and take over its
            # claims; the work they do again is idempotent.
            try:
                await self._lock()
            except (OSError, asyncpg.PostgresError, TimeoutError) as e:
                logger.debug("liveness lock not taken again yet: %s", e)
            else:
                logger.info("liveness lock taken again")


class ProcessLiveness(Liveness):
    """SQLite: alive while a process of that pid runs, started when it did, on this machine."""

    PREFIX = "process:"

    def __init__(self, pid: int | None = None) -> None:
        self._host = socket.gethostname()
        pid = os.getpid() if pid is None else pid
        self.me = f"{self.PREFIX}{self._host}:{pid}:{_started(pid)}"

    async def start(self) -> None:
        pass  # the process is alive for as long as it runs

    async def stop(self) -> None:
        pass

    async def alive(self, owner: str) -> bool:
        parts = owner.removeprefix(self.PREFIX).rsplit(":", 2)
        if not owner.startswith(self.PREFIX) or len(parts) != 3 or parts[0] != self._host:
            return True
        _, pid, started = parts
        return not pid.isdigit() or _started(int(pid)) == started


def _started(pid: int) -> str:
    """When process ``pid`` started, in clock ticks since boot; empty if none runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        with contextlib.suppress(OSError):
            os.kill(pid, 0)
            return "?"  # it runs; no /proc to say since when
        return ""
    # The command name, in parentheses, may hold spaces: fields count after it.
    return stat.rpartition(")")[2].split()[19]


def for_engine(engine: AsyncEngine) -> Liveness:
    if engine.dialect.name == "postgresql":
        return SessionLiveness(engine)
    return ProcessLiveness()
