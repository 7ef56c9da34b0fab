"""The read side's projection tables, changed by each event in the transaction that raised it.

Each change is computed from the event alone, never read back from the
write model: the events of one product come in order, exactly once, under
its lock. The allocation rows carry the product version they reflect, and
their upsert leaves a row of a newer version alone, so ``rebuild-views``
and the events converge. A deallocated line stays as a row with no
batchref (a tombstone), so that its version is kept. A refused line is
kept apart (``refused_lines_view``): an allocation of it later outdates it.
"""

import abc
from datetime import date
from functools import cache
from typing import Any

from sqlalchemy import Insert, Table, Update, bindparam, update

from app.adapters import orm
from app.adapters.database import Transaction, insert_on_conflict


class AbstractReadModel(abc.ABC):
    @abc.abstractmethod
    async def allocation_changed(
        self, orderid: str, sku: str, batchref: str | None, version: int
    ) -> None:
        """The order's line of ``sku`` sits in ``batchref`` now (None: in none)."""

    @abc.abstractmethod
    async def line_refused(self, orderid: str, sku: str, qty: int) -> None:
        """No batch could take the order's line of ``sku``: it is out of stock."""

    @abc.abstractmethod
    async def batch_added(
        self, ref: str, sku: str, eta: date | None, qty: int, version: int
    ) -> None: ...

    @abc.abstractmethod
    async def batch_resized(self, ref: str, qty: int, version: int) -> None:
        """The batch holds ``qty`` units now."""

    @abc.abstractmethod
    async def batch_allocated(self, ref: str, qty: int, version: int) -> None:
        """``qty`` more units of the batch are allocated (fewer, if negative)."""


def _upsert(table: Table, dialect_name: str) -> Insert:
    """INSERT, or UPDATE unless the row already reflects a version as new."""
    stmt = insert_on_conflict(table, dialect_name)
    keys = {c.name for c in table.primary_key}
    upsert: Insert = stmt.on_conflict_do_update(
        index_elements=sorted(keys),
        set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys},
        where=table.c.version < stmt.excluded.version,
    )
    return upsert


class _Statements:
    def __init__(self, dialect_name: str) -> None:
        v = orm.batches_view.c
        self.allocation = _upsert(orm.allocations_view, dialect_name)
        self.batch = _upsert(orm.batches_view, dialect_name)
        refused = insert_on_conflict(orm.refused_lines_view, dialect_name)
        self.refused: Insert = refused.on_conflict_do_update(
            index_elements=["orderid", "sku"], set_={"qty": refused.excluded.qty}
        )
        by_ref = update(orm.batches_view).where(v.reference == bindparam("ref"))
        self.resize: Update = by_ref.values(
            purchased=bindparam("qty"), version=bindparam("new_version")
        )
        self.allocate: Update = by_ref.values(
            allocated=v.allocated + bindparam("qty"), version=bindparam("new_version")
        )


@cache
def _statements(dialect_name: str) -> _Statements:
    return _Statements(dialect_name)


class SqlAlchemyReadModel(AbstractReadModel):
    def __init__(self, tx: Transaction) -> None:
        self._tx = tx

    async def allocation_changed(
        self, orderid: str, sku: str, batchref: str | None, version: int
    ) -> None:
        await self._run("allocation", orderid=orderid, sku=sku, batchref=batchref, version=version)

    async def line_refused(self, orderid: str, sku: str, qty: int) -> None:
        await self._run("refused", orderid=orderid, sku=sku, qty=qty)

    async def batch_added(
        self, ref: str, sku: str, eta: date | None, qty: int, version: int
    ) -> None:
        await self._run(
            "batch",
            reference=ref,
            sku=sku,
            eta=eta,
            purchased=qty,
            allocated=0,
            version=version,
        )

    async def batch_resized(self, ref: str, qty: int, version: int) -> None:
        await self._run("resize", ref=ref, qty=qty, new_version=version)

    async def batch_allocated(self, ref: str, qty: int, version: int) -> None:
        await self._run("allocate", ref=ref, qty=qty, new_version=version)

    async def _run(self, name: str, **params: Any) -> None:
        statement = getattr(_statements(self._tx.dialect), name)
        await self._tx.execute(statement, params)
