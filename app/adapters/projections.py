"""Keeping the read side's projection tables up to date.

An event says which rows changed; the row is then copied from the write
model as it stands, with the product version it reflects, by an upsert that
leaves a row of a newer version alone. Replayed, late or reordered events
therefore converge on the write model's state. A deallocated line stays as a
row with no batchref (a tombstone), so that its version is kept.
"""

import abc
from functools import cache

from sqlalchemy import Insert, Table, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.adapters import orm


class AbstractReadModel(abc.ABC):
    @abc.abstractmethod
    async def allocation_refreshed(self, orderid: str, sku: str) -> None:
        """Copy where the order's line of ``sku`` sits now (if anywhere)."""

    @abc.abstractmethod
    async def batch_refreshed(self, ref: str) -> None:
        """Copy batch ``ref`` as the write model has it now."""


_b, _p, _line, _a = orm.batches.c, orm.products.c, orm.order_lines.c, orm.allocations.c
_VERSION = select(_p.version_number).where(_p.sku == bindparam("sku"))
_BATCHREF = (
    select(_b.reference)
    .join(orm.allocations, _a.batch_id == _b.id)
    .join(orm.order_lines, _line.id == _a.orderline_id)
    .where(_line.orderid == bindparam("orderid"), _line.sku == bindparam("sku"))
)
_BATCH = (
    select(
        _b.reference,
        _b.sku,
        _b.eta,
        _b.purchased_quantity.label("purchased"),
        _b.allocated_quantity.label("allocated"),
        _p.version_number.label("version"),
    )
    .join(orm.products, _p.sku == _b.sku)
    .where(_b.reference == bindparam("ref"))
)


@cache
def _upsert(table: Table, dialect_name: str) -> Insert:
    """INSERT, or UPDATE unless the row already reflects a version as new."""
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    stmt = dialect.insert(table)
    keys = {c.name for c in table.primary_key}
    upsert: Insert = stmt.on_conflict_do_update(
        index_elements=sorted(keys),
        set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys},
        where=table.c.version < stmt.excluded.version,
    )
    return upsert


class SqlAlchemyReadModel(AbstractReadModel):
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def allocation_refreshed(self, orderid: str, sku: str) -> None:
        # The version is read before the line, so the row is never labelled
        # newer than what it shows.
        version = await self.session.scalar(_VERSION, {"sku": sku})
        if version is None:
            return
        batchref = await self.session.scalar(_BATCHREF, {"orderid": orderid, "sku": sku})
        await self.session.execute(
            _upsert(orm.allocations_view, self._dialect()),
            {"orderid": orderid, "sku": sku, "batchref": batchref, "version": version},
        )

    async def batch_refreshed(self, ref: str) -> None:
        row = (await self.session.execute(_BATCH, {"ref": ref})).one_or_none()
        if row is not None:
            await self.session.execute(_upsert(orm.batches_view, self._dialect()), row._asdict())

    def _dialect(self) -> str:
        return self.session.get_bind().dialect.name
