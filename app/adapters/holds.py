"""The Hold repository: holds as wholes (app.adapters.tables.holds), each locked for its command.

What each hold keeps of a sku is its Product's (the Product repository's
``hold_lines``); this is the state, the deadline and the lines as asked for.
"""

from __future__ import annotations

import abc
from datetime import datetime
from functools import cache
from typing import Any, Literal, TypeAlias

import orjson
from sqlalchemy import bindparam, insert, select, update

from app.adapters import tables
from app.adapters.transactions import Transaction
from app.domain import model

Busy: TypeAlias = Literal["wait", "skip", "fail"]


class AbstractHolds(abc.ABC):
    def __init__(self) -> None:
        self.seen: list[model.Hold] = []

    def add(self, hold: model.Hold) -> None:
        self._add(hold)
        self.seen.append(hold)

    async def get(self, holdid: str, busy: Busy = "wait") -> model.Hold | None:
        """The hold, locked for this unit of work; None if there is none.

        If another transaction holds its lock: ``wait`` for it; ``skip``, as if there
        were none; or ``fail`` at once, a collision the bus retries: what a transaction
        that locked a product first does, lest it wait on one that waits on it.
        """
        seen = next((h for h in self.seen if h.holdid == holdid), None)
        hold = seen or await self._get(holdid, busy)
        if hold is not None and hold not in self.seen:
            self.seen.append(hold)
        return hold

    @abc.abstractmethod
    async def due(self, now: datetime, limit: int) -> list[str]:
        """Holds still held whose time has passed by ``now``: the soonest first."""

    @abc.abstractmethod
    async def save(self) -> None: ...

    @abc.abstractmethod
    def _add(self, hold: model.Hold) -> None: ...

    @abc.abstractmethod
    async def _get(self, holdid: str, busy: Busy) -> model.Hold | None: ...


class _Statements:
    def __init__(self) -> None:
        h = tables.holds.c
        self.get = select(h.state, h.expires_at, h.orderid, h.lines, h.version).where(
            h.holdid == bindparam("hold")
        )
        self.busy = {
            "wait": self.get.with_for_update(),
            "skip": self.get.with_for_update(skip_locked=True),
            "fail": self.get.with_for_update(nowait=True),
        }
        # (Parameters of INSERT and UPDATE may not be named as the table's columns.)
        values = {
            "state": bindparam("now_state"),
            "expires_at": bindparam("until"),
            "orderid": bindparam("order"),
            "lines": bindparam("held_lines", type_=tables.holds.c.lines.type),
            "version": bindparam("changes"),
        }
        self.add = insert(tables.holds).values(holdid=bindparam("hold"), **values)
        self.set = update(tables.holds).where(h.holdid == bindparam("hold")).values(**values)
        self.due = (
            select(h.holdid)
            .where(h.state == "held", h.expires_at <= bindparam("now"))
            .order_by(h.expires_at)
            .limit(bindparam("most"))
        )


@cache
def _statements() -> _Statements:
    return _Statements()


def hold_of(holdid: str, row: Any) -> model.Hold:
    state, expires_at, orderid, lines, version = row
    if isinstance(lines, str):  # as asyncpg gives JSON
        lines = orjson.loads(lines)
    held = [model.HoldLine(ln["sku"], ln["qty"], ln["batchref"]) for ln in lines]
    return model.Hold(holdid, held, expires_at, state, orderid, version)


class SqlHolds(AbstractHolds):
    def __init__(self, tx: Transaction) -> None:
        super().__init__()
        self._tx = tx
        self._stored: dict[str, dict[str, Any] | None] = {}  # None: not stored yet

    def _add(self, hold: model.Hold) -> None:
        self._stored[hold.holdid] = None

    async def _get(self, holdid: str, busy: Busy) -> model.Hold | None:
        statements = _statements()
        statement = statements.busy[busy]
        if self._tx.dialect != "postgresql":
            statement = statements.get  # SQLite: the write lock is the database's
        rows = await self._tx.fetch(statement, {"hold": holdid})
        if not rows:
            return None
        hold = hold_of(holdid, rows[0])
        self._stored[holdid] = _params(hold)
        return hold

    async def due(self, now: datetime, limit: int) -> list[str]:
        rows = await self._tx.fetch(_statements().due, {"now": now, "most": limit})
        return [holdid for (holdid,) in rows]

    async def save(self) -> None:
        for hold in self.seen:
            params, stored = _params(hold), self._stored[hold.holdid]
            if params != stored:
                statement = _statements().add if stored is None else _statements().set
                await self._tx.write(statement, params)
                self._stored[hold.holdid] = params


def _params(hold: model.Hold) -> dict[str, Any]:
    lines = [{"sku": ln.sku, "qty": ln.qty, "batchref": ln.batchref} for ln in hold.lines]
    return {
        "hold": hold.holdid,
        "now_state": hold.state,
        "until": hold.expires_at,
        "order": hold.orderid,
        "held_lines": lines,
        "changes": hold.version,
    }
