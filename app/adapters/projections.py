"""The read side's projection tables, changed by each event in the transaction that raised it.

Each change is computed from the event alone, never read back from the
write model: the events of one product come in order, exactly once, under
its lock. The allocation rows carry the product version they reflect, and
their upsert leaves a row of a newer version alone, so ``rebuild-views``
and the events converge. A deallocated line stays as a row with no
batchref (a tombstone), so that its version is kept. Every accepted line's
state is in ``order_lines_view``, with the version of its last change; the
stock ledger (``stock_ledger``) gets a row for each change, appended.

The writes wait in the read model until ``flush``, which the unit of work
calls before it commits: the rows of a group of commands go in one
statement per table (asyncpg pipelines an executemany), not one round trip
each. They may be reordered across tables, which nothing reads before the
commit, never within one.
"""

import abc
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import date, datetime
from functools import cache
from typing import Any, TypeAlias

from sqlalchemy import Insert, Table, Update, bindparam, insert, update

from app.adapters import tables
from app.adapters.tables import insert_on_conflict
from app.adapters.transactions import Transaction


@dataclass(frozen=True)
class LedgerRow:
    """One row of the stock ledger (app.adapters.tables.stock_ledger)."""

    at: datetime
    kind: str
    sku: str
    batchref: str | None
    orderid: str | None
    qty: int  # the change to the batch's available units
    version: int
    holdid: str | None = None
    line_qty: int | None = None  # a line's row: the units the line is of
    reason: str | None = None
    note: str | None = None
    request_id: str | None = None
    idempotency_key: str | None = None


class AbstractReadModel(abc.ABC):
    @abc.abstractmethod
    async def allocation_changed(
        self, orderid: str, sku: str, batchref: str | None, version: int
    ) -> None:
        """The order's line of ``sku`` sits in ``batchref`` now (None: in none)."""

    @abc.abstractmethod
    async def line_changed(
        self, orderid: str, sku: str, qty: int, state: str, batchref: str | None, version: int
    ) -> None:
        """The order's line of ``sku`` is in ``state`` at product ``version``."""

    @abc.abstractmethod
    async def batch_added(
        self, ref: str, sku: str, eta: date | None, qty: int, version: int
    ) -> None: ...

    @abc.abstractmethod
    async def batch_resized(self, ref: str, qty: int, version: int) -> None:
        """The batch holds ``qty`` units now."""

    @abc.abstractmethod
    async def batch_rescheduled(self, ref: str, eta: date | None, version: int) -> None:
        """The batch arrives on ``eta`` now."""

    @abc.abstractmethod
    async def batch_allocated(self, ref: str, qty: int, version: int) -> None:
        """``qty`` more units of the batch are allocated (fewer, if negative)."""

    @abc.abstractmethod
    async def batch_held(self, ref: str, qty: int, version: int) -> None:
        """``qty`` more units of the batch are kept for holds (fewer, if negative)."""

    @abc.abstractmethod
    async def recorded(self, row: LedgerRow) -> None:
        """A row of the stock ledger."""

    @abc.abstractmethod
    async def flush(self) -> None:
        """Write what is still held back; the unit of work calls it before it commits."""


def _new(table: Table, dialect_name: str) -> Any:
    """An INSERT of a row of ``table``, each column's value the parameter ``new_<column>``."""
    stmt = insert_on_conflict(table, dialect_name)
    return stmt.values({c.name: bindparam(f"new_{c.name}", type_=c.type) for c in table.columns})


def _upsert(table: Table, dialect_name: str) -> Insert:
    """INSERT, or UPDATE unless the row already reflects a version as new."""
    stmt = _new(table, dialect_name)
    keys = {c.name for c in table.primary_key}
    upsert: Insert = stmt.on_conflict_do_update(
        index_elements=sorted(keys),
        set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys},
        where=table.c.version < stmt.excluded.version,
    )
    return upsert


class _Statements:
    def __init__(self, dialect_name: str) -> None:
        v = tables.batches_view.c
        self.allocation = _upsert(tables.allocations_view, dialect_name)
        self.batch = _upsert(tables.batches_view, dialect_name)
        self.line = _upsert(tables.order_lines_view, dialect_name)
        self.ledger = insert(tables.stock_ledger).values(
            {c.name: bindparam(c.name) for c in tables.stock_ledger.columns if c.name != "id"}
        )
        by_ref = update(tables.batches_view).where(v.reference == bindparam("ref"))
        self.resize: Update = by_ref.values(
            purchased=bindparam("qty"), version=bindparam("new_version")
        )
        self.allocate: Update = by_ref.values(
            allocated=v.allocated + bindparam("qty"), version=bindparam("new_version")
        )
        self.hold: Update = by_ref.values(
            held=v.held + bindparam("qty"), version=bindparam("new_version")
        )
        self.reschedule: Update = by_ref.values(
            eta=bindparam("arrives"), version=bindparam("new_version")
        )


@cache
def _statements(dialect_name: str) -> _Statements:
    return _Statements(dialect_name)


# The table each statement writes: flush keeps the order of a table's writes.
_TABLE = {
    "allocation": 0,
    "line": 1,
    "batch": 2,
    "resize": 2,
    "allocate": 2,
    "hold": 2,
    "reschedule": 2,
    "ledger": 3,
}
Write: TypeAlias = tuple[str, dict[str, Any]]


class SqlReadModel(AbstractReadModel):
    def __init__(self, tx: Transaction) -> None:
        self._tx = tx
        self._held: list[Write] = []

    async def allocation_changed(
        self, orderid: str, sku: str, batchref: str | None, version: int
    ) -> None:
        self._hold(
            "allocation",
            new_orderid=orderid,
            new_sku=sku,
            new_batchref=batchref,
            new_version=version,
        )

    async def line_changed(
        self, orderid: str, sku: str, qty: int, state: str, batchref: str | None, version: int
    ) -> None:
        self._hold(
            "line",
            new_orderid=orderid,
            new_sku=sku,
            new_qty=qty,
            new_state=state,
            new_batchref=batchref,
            new_version=version,
        )

    async def batch_rescheduled(self, ref: str, eta: date | None, version: int) -> None:
        self._hold("reschedule", ref=ref, arrives=eta, new_version=version)

    async def recorded(self, row: LedgerRow) -> None:
        self._hold("ledger", **asdict(row))

    async def batch_added(
        self, ref: str, sku: str, eta: date | None, qty: int, version: int
    ) -> None:
        self._hold(
            "batch",
            new_reference=ref,
            new_sku=sku,
            new_eta=eta,
            new_purchased=qty,
            new_allocated=0,
            new_held=0,
            new_version=version,
        )

    async def batch_resized(self, ref: str, qty: int, version: int) -> None:
        self._hold("resize", ref=ref, qty=qty, new_version=version)

    async def batch_allocated(self, ref: str, qty: int, version: int) -> None:
        self._hold("allocate", ref=ref, qty=qty, new_version=version)

    async def batch_held(self, ref: str, qty: int, version: int) -> None:
        self._hold("hold", ref=ref, qty=qty, new_version=version)

    def _hold(self, name: str, **params: Any) -> None:
        self._held.append((name, params))

    async def flush(self) -> None:
        held, self._held = sorted(self._held, key=lambda w: _TABLE[w[0]]), []  # stable
        statements = _statements(self._tx.dialect)
        for name, rows in _runs(held):
            statement = getattr(statements, name)
            if len(rows) == 1:
                await self._tx.write(statement, rows[0])
            else:
                await self._tx.execute_many(statement, rows)


def _runs(writes: list[Write]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Consecutive writes by one statement, together; a batch's allocations one sum."""
    name: str | None = None
    rows: list[dict[str, Any]] = []
    for next_name, params in writes:
        if next_name != name:
            if name is not None:
                yield name, rows
            name, rows = next_name, []
        if name == "allocate" and rows and rows[-1]["ref"] == params["ref"]:
            last = rows[-1]
            rows[-1] = {**params, "qty": last["qty"] + params["qty"]}  # the later version
        else:
            rows.append(params)
    if name is not None:
        yield name, rows
