"""The Product repository: the only way the service layer reaches the aggregate."""

import abc
from collections.abc import Iterable
from functools import cache

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession
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


class _Queries:
    """The repository's statements, built once (after the mappers exist)."""

    def __init__(self) -> None:
        p, b, line, a = orm.products.c, orm.batches.c, orm.order_lines.c, orm.allocations.c
        # The row lock on the product serialises writers of one sku in the
        # database (PostgreSQL); SQLite already has a single writer.
        self.product = (
            select(model.Product)
            .where(p.sku == bindparam("sku"))
            .with_for_update(of=orm.products)
            .execution_options(populate_existing=True)
        )
        self.batches = (
            select(model.Batch)
            .where(b.sku == bindparam("sku"))
            .order_by(b.id)
            .execution_options(populate_existing=True)
        )
        self.line_of_order = (
            select(a.batch_id, model.OrderLine)
            .join(orm.order_lines, line.id == a.orderline_id)
            .where(line.orderid == bindparam("orderid"), line.sku == bindparam("sku"))
        )
        self.sku_of_batch = select(b.sku).where(b.reference == bindparam("ref"))
        self.lines_of_batch = (
            select(model.OrderLine)
            .join(orm.allocations, a.orderline_id == line.id)
            .where(a.batch_id == bindparam("batch_id"))
        )


@cache
def _queries() -> _Queries:
    return _Queries()


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
                _queries().line_of_order, {"orderid": orderid, "sku": sku}
            )
            for batch_id, line in rows:
                held.setdefault(batch_id, set()).add(line)
        self._set_loaded_lines(product.batches, held)
        return product

    async def _get_by_batchref(self, ref: str) -> model.Product | None:
        sku = await self.session.scalar(_queries().sku_of_batch, {"ref": ref})
        if sku is None:
            return None
        product = await self._lock(sku)
        if product is None:  # pragma: no cover - batches.sku is a foreign key
            return None
        batch_id = next(_batch_id(b) for b in product.batches if b.reference == ref)
        lines = await self.session.scalars(_queries().lines_of_batch, {"batch_id": batch_id})
        self._set_loaded_lines(product.batches, {batch_id: set(lines)})
        return product

    async def _lock(self, sku: str) -> model.Product | None:
        product = (await self.session.scalars(_queries().product, {"sku": sku})).one_or_none()
        if product is not None:
            batches = await self.session.scalars(_queries().batches, {"sku": sku})
            set_committed_value(product, "batches", list(batches))
        return product

    @staticmethod
    def _set_loaded_lines(
        batches: Iterable[model.Batch], lines: dict[int, set[model.OrderLine]]
    ) -> None:
        for batch in batches:
            set_committed_value(batch, "allocations", lines.get(_batch_id(batch), set()))


def _batch_id(batch: model.Batch) -> int:
    batch_id: int = batch.id  # type: ignore[attr-defined]  # mapped primary key
    return batch_id
