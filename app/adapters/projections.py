"""Keeping the read side's projection tables up to date.

An event says which rows changed; the row is then copied from the write
model as it stands, with the product version it reflects, by an upsert that
leaves a row of a newer version alone. Replayed, late or reordered events
therefore converge on the write model's state. A deallocated line stays as a
row with no batchref (a tombstone), so that its version is kept.
"""

import abc
from typing import Any

from sqlalchemy import Table, select
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


class SqlAlchemyReadModel(AbstractReadModel):
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def allocation_refreshed(self, orderid: str, sku: str) -> None:
        b, line, a = orm.batches.c, orm.order_lines.c, orm.allocations.c
        # The version is read before the line, so the row is never labelled
        # newer than what it shows.
        version = await self.session.scalar(
            select(orm.products.c.version_number).where(orm.products.c.sku == sku)
        )
        if version is None:
            return
        batchref = await self.session.scalar(
            select(b.reference)
            .join(orm.allocations, a.batch_id == b.id)
            .join(orm.order_lines, line.id == a.orderline_id)
            .where(line.orderid == orderid, line.sku == sku)
        )
        await self._upsert(
            orm.allocations_view,
            {"orderid": orderid, "sku": sku, "batchref": batchref, "version": version},
        )

    async def batch_refreshed(self, ref: str) -> None:
        b, p = orm.batches.c, orm.products.c
        row = (
            await self.session.execute(
                select(
                    b.reference,
                    b.sku,
                    b.eta,
                    b.purchased_quantity.label("purchased"),
                    b.allocated_quantity.label("allocated"),
                    p.version_number.label("version"),
                )
                .join(orm.products, p.sku == b.sku)
                .where(b.reference == ref)
            )
        ).one_or_none()
        if row is not None:
            await self._upsert(orm.batches_view, row._asdict())

    async def _upsert(self, table: Table, values: dict[str, Any]) -> None:
        dialect = postgresql if self.session.get_bind().dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(table).values(values)
        keys = [c.name for c in table.primary_key]
        stmt = stmt.on_conflict_do_update(
            index_elements=keys,
            set_={k: stmt.excluded[k] for k in values if k not in keys},
            where=table.c.version < stmt.excluded.version,
        )
        await self.session.execute(stmt)
