"""Keeping the read side's projection tables up to date.

Every write is an upsert guarded by the product version it reflects: an
event applied twice, or after a newer one, leaves the row as it was.
"""

import abc
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.adapters import orm


class AbstractReadModel(abc.ABC):
    @abc.abstractmethod
    async def allocation_set(
        self, orderid: str, sku: str, batchref: str | None, version: int
    ) -> None:
        """Record where an order's line of ``sku`` sits; None once deallocated."""

    @abc.abstractmethod
    async def batch_refreshed(self, ref: str) -> None:
        """Copy batch ``ref`` as the write model has it now."""


class SqlAlchemyReadModel(AbstractReadModel):
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def allocation_set(
        self, orderid: str, sku: str, batchref: str | None, version: int
    ) -> None:
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
