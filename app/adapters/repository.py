"""The Product repository: the only way the service layer reaches the aggregate."""

import abc
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload
from sqlalchemy.orm.attributes import set_committed_value

from app.adapters import orm
from app.domain import model


class AbstractRepository(abc.ABC):
    def __init__(self) -> None:
        self.seen: set[model.Product] = set()

    def add(self, product: model.Product) -> None:
        self._add(product)
        self.seen.add(product)

    async def get(self, sku: str, orderid: str | None = None) -> model.Product | None:
        """The product of ``sku``, locked for this unit of work.

        With ``orderid``, the line that order holds for the sku (if any) is
        loaded too, so that allocating it again changes nothing.
        """
        product = await self._get(sku, orderid)
        if product is not None:
            self.seen.add(product)
        return product

    async def get_by_batchref(self, ref: str) -> model.Product | None:
        """The product owning batch ``ref``, locked, with that batch's lines."""
        product = await self._get_by_batchref(ref)
        if product is not None:
            self.seen.add(product)
        return product

    @abc.abstractmethod
    def _add(self, product: model.Product) -> None: ...

    @abc.abstractmethod
    async def _get(self, sku: str, orderid: str | None) -> model.Product | None: ...

    @abc.abstractmethod
    async def _get_by_batchref(self, ref: str) -> model.Product | None: ...


class SqlAlchemyRepository(AbstractRepository):
    def __init__(self, session: AsyncSession) -> None:
        super().__init__()
        self.session = session

    def _add(self, product: model.Product) -> None:
        self.session.add(product)

    async def _get(self, sku: str, orderid: str | None) -> model.Product | None:
        product = await self._lock(sku)
        if product is None:
            return None
        held: dict[int, set[model.OrderLine]] = {}
        if orderid is not None:
            rows = await self.session.execute(
                select(orm.allocations.c.batch_id, model.OrderLine)
                .join(orm.order_lines, orm.order_lines.c.id == orm.allocations.c.orderline_id)
                .where(orm.order_lines.c.orderid == orderid, orm.order_lines.c.sku == sku)
            )
            for batch_id, line in rows:
                held.setdefault(batch_id, set()).add(line)
        self._set_loaded_lines(product.batches, held)
        return product

    async def _get_by_batchref(self, ref: str) -> model.Product | None:
        sku = await self.session.scalar(
            select(orm.batches.c.sku).where(orm.batches.c.reference == ref)
        )
        if sku is None:
            return None
        product = await self._lock(sku)
        if product is None:  # pragma: no cover - batches.sku is a foreign key
            return None
        batch = next(b for b in product.batches if b.reference == ref)
        lines = await self.session.scalars(
            select(model.OrderLine)
            .join(orm.allocations, orm.allocations.c.orderline_id == orm.order_lines.c.id)
            .join(orm.batches, orm.batches.c.id == orm.allocations.c.batch_id)
            .where(orm.batches.c.reference == ref)
        )
        self._set_loaded_lines(product.batches, {_batch_id(batch): set(lines)})
        return product

    async def _lock(self, sku: str) -> model.Product | None:
        # The row lock on the product serialises writers of one sku in the
        # database (PostgreSQL); SQLite already has a single writer.
        result = await self.session.scalars(
            select(model.Product)
            .where(orm.products.c.sku == sku)
            .options(selectinload(model.Product.batches))  # type: ignore[misc, arg-type]
            .with_for_update(of=orm.products)
            .execution_options(populate_existing=True)
        )
        return result.one_or_none()

    @staticmethod
    def _set_loaded_lines(
        batches: Iterable[model.Batch], lines: dict[int, set[model.OrderLine]]
    ) -> None:
        for batch in batches:
            set_committed_value(batch, "allocations", lines.get(_batch_id(batch), set()))


def _batch_id(batch: model.Batch) -> int:
    batch_id: int = batch.id  # type: ignore[attr-defined]  # mapped primary key
    return batch_id
