"""The Product repository: the only way the service layer reaches the aggregate.

A product is loaded row-locked (on PostgreSQL; SQLite has a single writer)
with its batches, and with just the order lines the command needs: the one
an order holds (so that allocating it again changes nothing), or every line
of a batch whose quantity changes. ``save`` writes back what changed since.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from sqlalchemy import Integer, bindparam, delete, insert, select, update
from sqlalchemy.orm.exc import StaleDataError

from app.adapters import orm
from app.adapters.database import Transaction
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

    async def advance(self, ref: str, position: tuple[int, int]) -> bool:
        """Record that batch ``ref`` takes its quantity from the stream entry at ``position``.

        False, recording nothing, when an entry at or past ``position`` was
        applied to it already. Call it once the batch's product is got: the
        product's lock orders the changes to its batches.
        """
        applied = await self._position(ref)
        if applied is not None and applied >= position:
            return False
        await self._set_position(ref, position, new=applied is None)
        return True

    @abc.abstractmethod
    async def save(self) -> None:
        """Write what changed in the products seen; before commit, and before a query."""

    @abc.abstractmethod
    def _add(self, product: model.Product) -> None: ...

    @abc.abstractmethod
    async def _get(self, sku: str, orderid: str | None) -> model.Product | None: ...

    @abc.abstractmethod
    async def _get_by_batchref(self, ref: str) -> model.Product | None: ...

    @abc.abstractmethod
    async def _position(self, ref: str) -> tuple[int, int] | None: ...

    @abc.abstractmethod
    async def _set_position(self, ref: str, position: tuple[int, int], new: bool) -> None: ...


class _Statements:
    def __init__(self) -> None:
        p, b, line, a = orm.products.c, orm.batches.c, orm.order_lines.c, orm.allocations.c
        # The product's row lock serialises its writers. The batches are read
        # after it is granted, by a statement of their own: one joined to the
        # locked row would see them as they were before the wait.
        self.product = (
            select(p.version_number, p.out_of_stock)
            .where(p.sku == bindparam("sku"))
            .with_for_update()
        )
        self.batches = (
            select(b.id, b.reference, b.purchased_quantity, b.allocated_quantity, b.eta)
            .where(b.sku == bindparam("sku"))
            .order_by(b.id)
        )
        self.line_of_order = (
            select(a.batch_id, line.id, line.qty)
            .join(orm.order_lines, line.id == a.orderline_id)
            .where(line.orderid == bindparam("orderid"), line.sku == bindparam("sku"))
        )
        self.sku_of_batch = select(b.sku).where(b.reference == bindparam("ref"))
        self.lines_of_batch = (
            select(line.id, line.orderid, line.qty)
            .join(orm.allocations, a.orderline_id == line.id)
            .where(a.batch_id == bindparam("batch_id"))
        )
        # (Parameters of INSERT and UPDATE may not be named as the table's columns.)
        self.add_product = insert(orm.products).values(
            sku=bindparam("product"),
            version_number=bindparam("version"),
            out_of_stock=bindparam("out_of_stock"),
        )
        # The version read is checked as a second guard behind the lock.
        self.set_version = (
            update(orm.products)
            .where(p.sku == bindparam("product"), p.version_number == bindparam("expected"))
            .values(version_number=bindparam("version"), out_of_stock=bindparam("out_of_stock"))
        )
        self.add_batch = (
            insert(orm.batches)
            .values(
                reference=bindparam("ref"),
                sku=bindparam("product"),
                purchased_quantity=bindparam("purchased"),
                allocated_quantity=bindparam("allocated"),
                eta=bindparam("arrives"),
            )
            .returning(b.id)
        )
        self.set_quantities = (
            update(orm.batches)
            .where(b.id == bindparam("batch_id"))
            .values(
                purchased_quantity=bindparam("purchased"),
                allocated_quantity=bindparam("allocated"),
            )
        )
        self.add_line = (
            insert(orm.order_lines)
            .values(orderid=bindparam("order"), sku=bindparam("product"), qty=bindparam("units"))
            .returning(line.id)
        )
        self.allocate = insert(orm.allocations).values(
            orderline_id=bindparam("line_id"), batch_id=bindparam("to_batch")
        )
        # PostgreSQL writes both in one statement: one round trip fewer.
        new_line = self.add_line.cte("new_line")
        self.add_allocated_line = (
            insert(orm.allocations)
            .from_select(
                ["orderline_id", "batch_id"],
                select(new_line.c.id, bindparam("to_batch", type_=Integer)),
            )
            .returning(a.orderline_id)
        )
        s = orm.batch_stream_positions.c
        self.position = select(s.entry_ms, s.entry_seq).where(s.reference == bindparam("ref"))
        self.add_position = insert(orm.batch_stream_positions).values(
            reference=bindparam("ref"), entry_ms=bindparam("ms"), entry_seq=bindparam("seq")
        )
        self.set_position = (
            update(orm.batch_stream_positions)
            .where(s.reference == bindparam("ref"))
            .values(entry_ms=bindparam("ms"), entry_seq=bindparam("seq"))
        )
        self.deallocate = delete(orm.allocations).where(a.orderline_id == bindparam("line_id"))
        self.remove_line = delete(orm.order_lines).where(line.id == bindparam("line_id"))


@cache
def _statements() -> _Statements:
    return _Statements()


@dataclass
class _Stored:
    """A product as the database has it in this transaction: what ``save`` compares to."""

    version: int | None  # None: not stored yet
    out_of_stock: bool = False
    batch_ids: dict[str, int] = field(default_factory=dict)
    quantities: dict[str, tuple[int, int]] = field(default_factory=dict)
    line_ids: dict[tuple[str, model.OrderLine], int] = field(default_factory=dict)
    orders: set[str] = field(default_factory=set)  # whose line is loaded


class SqlAlchemyRepository(AbstractRepository):
    def __init__(self, tx: Transaction) -> None:
        super().__init__()
        self._tx = tx
        self._products: dict[str, model.Product] = {}
        self._stored: dict[str, _Stored] = {}

    def _add(self, product: model.Product) -> None:
        self._products[product.sku] = product
        self._stored[product.sku] = _Stored(version=None)

    async def _get(self, sku: str, orderid: str | None) -> model.Product | None:
        product = self._products.get(sku) or await self._load(sku)
        if product is not None and orderid is not None:
            stored = self._stored[sku]
            if orderid not in stored.orders:
                await self._load_line(product, stored, orderid)
        return product

    async def _get_by_batchref(self, ref: str) -> model.Product | None:
        sku = await self._tx.scalar(_statements().sku_of_batch, {"ref": ref})
        product = None if sku is None else self._products.get(sku) or await self._load(sku)
        if product is None:
            return None
        await self.save()  # the lines as this transaction has them
        stored = self._stored[product.sku]
        batch = next(b for b in product.batches if b.reference == ref)
        rows = await self._tx.fetch(
            _statements().lines_of_batch, {"batch_id": stored.batch_ids[ref]}
        )
        for line_id, orderid, qty in rows:
            line = model.OrderLine(orderid, product.sku, qty)
            if (ref, line) not in stored.line_ids:
                batch.allocations.add(line)
                stored.line_ids[(ref, line)] = line_id
                stored.orders.add(orderid)
        return product

    async def _position(self, ref: str) -> tuple[int, int] | None:
        rows = await self._tx.fetch(_statements().position, {"ref": ref})
        return (rows[0][0], rows[0][1]) if rows else None

    async def _set_position(self, ref: str, position: tuple[int, int], new: bool) -> None:
        statement = _statements().add_position if new else _statements().set_position
        await self._tx.execute(statement, {"ref": ref, "ms": position[0], "seq": position[1]})

    async def _load(self, sku: str) -> model.Product | None:
        rows = await self._tx.fetch(_statements().product, {"sku": sku})
        if not rows:
            return None
        stored = _Stored(version=rows[0][0], out_of_stock=bool(rows[0][1]))
        batches = []
        for batch_id, ref, purchased, allocated, eta in await self._tx.fetch(
            _statements().batches, {"sku": sku}
        ):
            batch = model.Batch(ref, sku, purchased, eta)
            batch.allocated_quantity = allocated
            batches.append(batch)
            stored.batch_ids[ref] = batch_id
            stored.quantities[ref] = (purchased, allocated)
        product = model.Product(
            sku, batches, version_number=stored.version or 0, out_of_stock=stored.out_of_stock
        )
        self._products[sku] = product
        self._stored[sku] = stored
        return product

    async def _load_line(self, product: model.Product, stored: _Stored, orderid: str) -> None:
        await self.save()
        stored.orders.add(orderid)
        refs = {batch_id: ref for ref, batch_id in stored.batch_ids.items()}
        rows = await self._tx.fetch(
            _statements().line_of_order, {"orderid": orderid, "sku": product.sku}
        )
        for batch_id, line_id, qty in rows:
            ref = refs[batch_id]
            line = model.OrderLine(orderid, product.sku, qty)
            next(b for b in product.batches if b.reference == ref).allocations.add(line)
            stored.line_ids[(ref, line)] = line_id

    async def save(self) -> None:
        for sku, product in self._products.items():
            await self._save(product, self._stored[sku])

    async def _save(self, product: model.Product, stored: _Stored) -> None:
        statements, tx = _statements(), self._tx
        if stored.version is None:
            await tx.execute(
                statements.add_product,
                {
                    "product": product.sku,
                    "version": product.version_number,
                    "out_of_stock": product.out_of_stock,
                },
            )
        elif (stored.version, stored.out_of_stock) != (
            product.version_number,
            product.out_of_stock,
        ):
            changed = await tx.execute(
                statements.set_version,
                {
                    "product": product.sku,
                    "expected": stored.version,
                    "version": product.version_number,
                    "out_of_stock": product.out_of_stock,
                },
            )
            if changed != 1:
                raise StaleDataError(
                    f"product {product.sku} is no longer at version {stored.version}"
                )
        stored.version, stored.out_of_stock = product.version_number, product.out_of_stock

        held = {(b.reference, line) for b in product.batches for line in b.allocations}
        for key in [k for k in stored.line_ids if k not in held]:
            line_id = stored.line_ids.pop(key)
            await tx.execute(statements.deallocate, {"line_id": line_id})
            await tx.execute(statements.remove_line, {"line_id": line_id})

        for batch in product.batches:
            ref = batch.reference
            quantities = (batch.purchased_quantity, batch.allocated_quantity)
            if ref not in stored.batch_ids:
                stored.batch_ids[ref] = await tx.scalar(statements.add_batch, _row(batch))
            elif stored.quantities[ref] != quantities:
                await tx.execute(
                    statements.set_quantities,
                    {
                        "batch_id": stored.batch_ids[ref],
                        "purchased": quantities[0],
                        "allocated": quantities[1],
                    },
                )
            stored.quantities[ref] = quantities
            for line in batch.allocations:
                if (ref, line) in stored.line_ids:
                    continue
                params = {
                    "order": line.orderid,
                    "product": line.sku,
                    "units": line.qty,
                    "to_batch": stored.batch_ids[ref],
                }
                if tx.dialect == "postgresql":
                    line_id = await tx.scalar(statements.add_allocated_line, params)
                else:
                    line_id = await tx.scalar(statements.add_line, params)
                    await tx.execute(statements.allocate, {**params, "line_id": line_id})
                stored.line_ids[(ref, line)] = line_id
                stored.orders.add(line.orderid)


def _row(batch: model.Batch) -> dict[str, Any]:
    return {
        "ref": batch.reference,
        "product": batch.sku,
        "purchased": batch.purchased_quantity,
        "allocated": batch.allocated_quantity,
        "arrives": batch.eta,
    }
