"""The Product repository: the only way the service layer reaches the aggregate.

A product is loaded row-locked (on PostgreSQL; SQLite has a single writer)
with its batches, and with just the order lines the command needs: the one
an order holds (so that allocating it again changes nothing), or every line
of a batch whose quantity changes. ``save`` writes back what changed since.

On PostgreSQL the batches and the orders' lines come in one statement once
the lock is granted, and the new lines of a save go in one statement: a
group of allocations costs the round trips of one.
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import date
from functools import cache
from typing import Any

from sqlalchemy import (
    Boolean,
    Date,
    Integer,
    String,
    any_,
    bindparam,
    cast,
    delete,
    func,
    insert,
    literal_column,
    null,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import TypeEngine

from app.adapters import tables
from app.adapters.transactions import Transaction
from app.clock import Position, position_now
from app.domain import model


class AbstractRepository(abc.ABC):
    def __init__(self) -> None:
        self.seen: set[model.Product] = set()

    def add(self, product: model.Product) -> None:
        self._add(product)
        self.seen.add(product)

    async def get(
        self, sku: str, orderid: str | None = None, holdid: str | None = None
    ) -> model.Product | None:
        """The product of ``sku``, locked for this unit of work.

        With ``orderid``, the line that order holds for the sku (if any) is
        loaded too, so that allocating it again changes nothing; with
        ``holdid``, what that hold keeps of it.
        """
        product = await self._get(sku, orderid)
        if product is not None:
            self.seen.add(product)
            if holdid is not None:
                await self._load_held(product, holdid)
        return product

    async def prefetch(self, sku: str, orderids: Collection[str]) -> None:
        """Load the product of ``sku``, locked, with the lines these orders hold of it.

        What a group of allocations of one sku reads, in one go: ``get`` of
        the sku for any of these orders then reads nothing more.
        """
        product = await self._prefetch(sku, orderids)
        if product is not None:
            self.seen.add(product)

    async def get_by_batchref(self, ref: str) -> model.Product | None:
        """The product owning batch ``ref``, locked, with that batch's lines."""
        product = await self._get_by_batchref(ref)
        if product is not None:
            self.seen.add(product)
        return product

    @abc.abstractmethod
    async def last_of_line(self, orderid: str, sku: str) -> tuple[str, int] | None:
        """What became of the order's line of ``sku`` last, from the ledger, and its units.

        None if the service never accepted it. Ask once the product is got: its
        lock orders the changes.
        """

    async def advance(self, ref: str, position: Position | None) -> bool:
        """Record that batch ``ref`` takes its quantity from the change at ``position``.

        False, recording nothing, when a change at or past ``position`` was
        applied to it already. None is now: past every change applied so far,
        even one whose clock ran ahead of this one's. Call it once the batch's
        product is got: the product's lock orders the changes to its batches.
        """
        applied = await self._position(ref)
        if position is None:
            position = position_now()
            if applied is not None and position <= applied:
                position = (applied[0], applied[1] + 1)
        elif applied is not None and applied >= position:
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
    async def _prefetch(self, sku: str, orderids: Collection[str]) -> model.Product | None: ...

    @abc.abstractmethod
    async def _get_by_batchref(self, ref: str) -> model.Product | None: ...

    @abc.abstractmethod
    async def _load_held(self, product: model.Product, holdid: str) -> None: ...

    @abc.abstractmethod
    async def _position(self, ref: str) -> Position | None: ...

    @abc.abstractmethod
    async def _set_position(self, ref: str, position: Position, new: bool) -> None: ...


class _Statements:
    def __init__(self) -> None:
        p, b, line, a = (
            tables.products.c,
            tables.batches.c,
            tables.order_lines.c,
            tables.allocations.c,
        )
        # The product's row lock serialises its writers. The batches are read
        # after it is granted, by a statement of their own: one joined to the
        # locked row would see them as they were before the wait.
        self.product = (
            select(p.version_number, p.out_of_stock)
            .where(p.sku == bindparam("sku"))
            .with_for_update()
        )
        self.batches = (
            select(
                b.id,
                b.reference,
                b.purchased_quantity,
                b.allocated_quantity,
                b.eta,
                b.version,
                b.held_quantity,
            )
            .where(b.sku == bindparam("sku"))
            .order_by(b.id)
        )
        # PostgreSQL: the lock, the batches, and the lines the orders hold,
        # in one statement. Its rows are as they were when it began, which
        # may be before a wait for the lock: ``seen``, the version then, tells.
        # The lines are a part of their own, found by order: joined to the
        # batches, a plan could go through every allocation of a batch.
        self.lines_of_orders = (
            select(a.batch_id, line.id, line.orderid, line.qty)
            .join(tables.allocations, a.orderline_id == line.id)
            .where(
                line.sku == bindparam("sku"),
                line.orderid == any_(bindparam("orderids", type_=ARRAY(String))),
            )
        )
        seen = tables.products.alias("seen")
        locked = (
            select(
                p.version_number,
                p.out_of_stock,
                select(seen.c.version_number)
                .where(seen.c.sku == bindparam("sku"))
                .scalar_subquery()
                .label("seen"),
            )
            .where(p.sku == bindparam("sku"))
            .with_for_update()
            .cte("locked")
        )
        product_rows = select(
            literal_column("0").label("part"),
            *locked.c,
            b.id.label("batch_id"),
            b.reference,
            b.purchased_quantity,
            b.allocated_quantity,
            b.eta,
            b.version.label("batch_version"),
            b.held_quantity,
            *_nulls(Integer, String, Integer),
        ).outerjoin(tables.batches, b.sku == bindparam("sku"))
        line_rows = self.lines_of_orders.with_only_columns(
            literal_column("1"),
            *_nulls(Integer, Boolean, Integer),
            a.batch_id,
            *_nulls(String, Integer, Integer, Date, Integer, Integer),
            line.id,
            line.orderid,
            line.qty,
        )
        self.locked_product = union_all(product_rows, line_rows).order_by("part", "batch_id")

        self.line_of_order = (
            select(a.batch_id, line.id, line.qty)
            .join(tables.order_lines, line.id == a.orderline_id)
            .where(line.orderid == bindparam("orderid"), line.sku == bindparam("sku"))
        )
        self.line_id = select(line.id).where(
            line.orderid == bindparam("orderid"), line.sku == bindparam("sku")
        )
        self.sku_of_batch = select(b.sku).where(b.reference == bindparam("ref"))
        self.lines_of_batch = (
            select(line.id, line.orderid, line.qty)
            .join(tables.allocations, a.orderline_id == line.id)
            .where(a.batch_id == bindparam("batch_id"))
        )
        # (Parameters of INSERT and UPDATE may not be named as the table's columns.)
        self.add_product = insert(tables.products).values(
            sku=bindparam("product"),
            version_number=bindparam("version"),
            out_of_stock=bindparam("out_of_stock"),
        )
        # The version read is checked as a second guard behind the lock.
        self.set_version = (
            update(tables.products)
            .where(p.sku == bindparam("product"), p.version_number == bindparam("expected"))
            .values(version_number=bindparam("version"), out_of_stock=bindparam("out_of_stock"))
        )
        self.add_batch = (
            insert(tables.batches)
            .values(
                reference=bindparam("ref"),
                sku=bindparam("product"),
                purchased_quantity=bindparam("purchased"),
                allocated_quantity=bindparam("allocated"),
                eta=bindparam("arrives"),
                version=bindparam("changed_at"),
                held_quantity=bindparam("kept"),
            )
            .returning(b.id)
        )
        self.set_quantities = (
            update(tables.batches)
            .where(b.id == bindparam("batch_id"))
            .values(
                purchased_quantity=bindparam("purchased"),
                allocated_quantity=bindparam("allocated"),
                eta=bindparam("arrives"),
                version=bindparam("changed_at"),
                held_quantity=bindparam("kept"),
            )
        )
        h = tables.hold_lines.c
        self.held_of_hold = select(h.holdid, h.qty, h.batch_id).where(
            h.sku == bindparam("sku"), h.holdid == bindparam("holdid")
        )
        self.held_of_batch = (
            select(h.holdid, h.qty, h.batch_id)
            .where(h.batch_id == bindparam("batch_id"))
            .order_by(h.id)
        )
        self.add_held = insert(tables.hold_lines).values(
            holdid=bindparam("hold"),
            sku=bindparam("product"),
            batch_id=bindparam("in_batch"),
            qty=bindparam("units"),
        )
        self.remove_held = delete(tables.hold_lines).where(
            h.holdid == bindparam("hold"), h.sku == bindparam("product")
        )
        self.add_line = (
            insert(tables.order_lines)
            .values(orderid=bindparam("order"), sku=bindparam("product"), qty=bindparam("units"))
            .returning(line.id)
        )
        self.allocate = insert(tables.allocations).values(
            orderline_id=bindparam("line_id"), batch_id=bindparam("to_batch")
        )
        # PostgreSQL writes both in one statement: one round trip fewer.
        new_line = self.add_line.cte("new_line")
        self.add_allocated_line = (
            insert(tables.allocations)
            .from_select(
                ["orderline_id", "batch_id"],
                select(new_line.c.id, bindparam("to_batch", type_=Integer)),
            )
            .returning(a.orderline_id)
        )
        # PostgreSQL: many new lines, each with its allocation, in one statement.
        # (Set-returning functions side by side in a select list run in step.)
        unnested = select(
            func.unnest(bindparam("orders", type_=ARRAY(String))).label("orderid"),
            func.unnest(bindparam("units", type_=ARRAY(Integer))).label("qty"),
            func.unnest(bindparam("to_batches", type_=ARRAY(Integer))).label("batch_id"),
        ).cte("new")
        inserted = (
            insert(tables.order_lines)
            .from_select(
                ["orderid", "sku", "qty"],
                select(unnested.c.orderid, bindparam("product", type_=String), unnested.c.qty),
            )
            .returning(line.id, line.orderid)
            .cte("inserted")
        )
        placed = (
            insert(tables.allocations)
            .from_select(
                ["orderline_id", "batch_id"],
                select(inserted.c.id, unnested.c.batch_id).join(
                    unnested, unnested.c.orderid == inserted.c.orderid
                ),
            )
            .cte("placed")
        )
        self.add_allocated_lines = select(inserted.c.id, inserted.c.orderid).add_cte(placed)
        s = tables.batch_change_positions.c
        self.position = select(s.position_ms, s.position_seq).where(s.reference == bindparam("ref"))
        self.add_position = insert(tables.batch_change_positions).values(
            reference=bindparam("ref"), position_ms=bindparam("ms"), position_seq=bindparam("seq")
        )
        self.set_position = (
            update(tables.batch_change_positions)
            .where(s.reference == bindparam("ref"))
            .values(position_ms=bindparam("ms"), position_seq=bindparam("seq"))
        )
        ledger = tables.stock_ledger.c
        self.last_of_line = (
            select(ledger.kind, ledger.line_qty)
            .where(ledger.orderid == bindparam("orderid"), ledger.sku == bindparam("sku"))
            .order_by(ledger.id.desc())
            .limit(1)
        )
        self.deallocate = delete(tables.allocations).where(a.orderline_id == bindparam("line_id"))
        self.remove_line = delete(tables.order_lines).where(line.id == bindparam("line_id"))


def _nulls(*types: type[TypeEngine[Any]]) -> list[Any]:
    """NULLs of these types: the columns one part of a UNION does not have."""
    return [cast(null(), t) for t in types]


@cache
def _statements() -> _Statements:
    return _Statements()


@dataclass
class _Stored:
    """A product as the database has it in this transaction: what ``save`` compares to."""

    version: int | None  # None: not stored yet
    out_of_stock: bool = False
    batch_ids: dict[str, int] = field(default_factory=dict)
    # Each batch's purchased and allocated units, eta, version and held units.
    quantities: dict[str, tuple[int, int, date | None, int, int]] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)  # the holds whose line is stored
    holds: set[str] = field(default_factory=set)  # whose line is loaded
    # None: written in this transaction, the id not read back
    line_ids: dict[tuple[str, model.OrderLine], int | None] = field(default_factory=dict)
    orders: set[str] = field(default_factory=set)  # whose line is loaded


class SqlRepository(AbstractRepository):
    def __init__(self, tx: Transaction) -> None:
        super().__init__()
        self._tx = tx
        self._products: dict[str, model.Product] = {}
        self._stored: dict[str, _Stored] = {}
        self._absent: set[str] = set()  # skus looked for and not found

    def _add(self, product: model.Product) -> None:
        self._products[product.sku] = product
        self._stored[product.sku] = _Stored(version=None)

    async def _get(self, sku: str, orderid: str | None) -> model.Product | None:
        return await self._prefetch(sku, () if orderid is None else (orderid,))

    async def _prefetch(self, sku: str, orderids: Collection[str]) -> model.Product | None:
        product = self._products.get(sku)
        if product is None:
            if sku in self._absent:
                return None
            product = await self._load(sku, orderids)
            if product is None:
                self._absent.add(sku)  # for this transaction: its commands see one state
                return None
        stored = self._stored[sku]
        missing = [orderid for orderid in orderids if orderid not in stored.orders]
        if missing:
            await self._load_lines(product, stored, missing)
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
        kept = await self._tx.fetch(
            _statements().held_of_batch, {"batch_id": stored.batch_ids[ref]}
        )
        self._keep(product, stored, kept)
        return product

    async def _load_held(self, product: model.Product, holdid: str) -> None:
        stored = self._stored[product.sku]
        if holdid in stored.holds:
            return
        await self.save()
        params = {"sku": product.sku, "holdid": holdid}
        self._keep(product, stored, await self._tx.fetch(_statements().held_of_hold, params))
        stored.holds.add(holdid)

    def _keep(self, product: model.Product, stored: _Stored, rows: Iterable[Any]) -> None:
        """Put the held lines read, (holdid, qty, batch id), in the product."""
        refs = {batch_id: ref for ref, batch_id in stored.batch_ids.items()}
        for holdid, qty, batch_id in rows:
            if holdid not in stored.held:
                product.held[holdid] = model.HeldLine(holdid, qty, refs[batch_id])
                stored.held.add(holdid)
                stored.holds.add(holdid)

    async def last_of_line(self, orderid: str, sku: str) -> tuple[str, int] | None:
        rows = await self._tx.fetch(_statements().last_of_line, {"orderid": orderid, "sku": sku})
        return (rows[0][0], rows[0][1]) if rows else None

    async def _position(self, ref: str) -> Position | None:
        rows = await self._tx.fetch(_statements().position, {"ref": ref})
        return (rows[0][0], rows[0][1]) if rows else None

    async def _set_position(self, ref: str, position: Position, new: bool) -> None:
        statement = _statements().add_position if new else _statements().set_position
        await self._tx.write(statement, {"ref": ref, "ms": position[0], "seq": position[1]})

    async def _load(self, sku: str, orderids: Collection[str] = ()) -> model.Product | None:
        """The product, locked; on PostgreSQL with the lines ``orderids`` hold, in the same read."""
        if self._tx.dialect != "postgresql":
            return await self._load_apart(sku)
        params = {"sku": sku, "orderids": tuple(orderids)}
        rows = await self._tx.fetch(_statements().locked_product, params)
        if rows and rows[0][3] != rows[0][1]:
            # The lock was granted after a change to the product: read it
            # again, under the lock now, as it is.
            rows = await self._tx.fetch(_statements().locked_product, params)
        if not rows or rows[0][0] != 0:  # no product: lines alone, if any
            return None
        stored = _Stored(version=rows[0][1], out_of_stock=bool(rows[0][2]))
        stored.orders.update(orderids)
        batch_rows = [row[4:11] for row in rows if row[0] == 0 and row[4] is not None]
        held = [(row[4], row[11], row[12], row[13]) for row in rows if row[0] == 1]
        product = self._loaded(sku, stored, batch_rows)
        _place(product, stored, held)
        return product

    async def _load_apart(self, sku: str) -> model.Product | None:
        """SQLite: the product, then its batches (the database's write lock is held)."""
        rows = await self._tx.fetch(_statements().product, {"sku": sku})
        if not rows:
            return None
        stored = _Stored(version=rows[0][0], out_of_stock=bool(rows[0][1]))
        batch_rows = await self._tx.fetch(_statements().batches, {"sku": sku})
        return self._loaded(sku, stored, batch_rows)

    def _loaded(self, sku: str, stored: _Stored, batch_rows: Iterable[Any]) -> model.Product:
        batches = []
        for batch_id, ref, purchased, allocated, eta, version, kept in batch_rows:
            batch = model.Batch(ref, sku, purchased, eta)
            batch.allocated_quantity, batch.held_quantity = allocated, kept
            batch.version = version
            batches.append(batch)
            stored.batch_ids[ref] = batch_id
            stored.quantities[ref] = (purchased, allocated, eta, version, kept)
        product = model.Product(
            sku, batches, version_number=stored.version or 0, out_of_stock=stored.out_of_stock
        )
        self._products[sku] = product
        self._stored[sku] = stored
        return product

    async def _load_lines(
        self, product: model.Product, stored: _Stored, orderids: list[str]
    ) -> None:
        await self.save()  # the lines as this transaction has them
        statements, sku = _statements(), product.sku
        if self._tx.dialect == "postgresql":
            held = list(
                await self._tx.fetch(
                    statements.lines_of_orders, {"sku": sku, "orderids": tuple(orderids)}
                )
            )
        else:
            held = []
            for orderid in orderids:
                rows = await self._tx.fetch(
                    statements.line_of_order, {"orderid": orderid, "sku": sku}
                )
                held += [(batch_id, line_id, orderid, qty) for batch_id, line_id, qty in rows]
        stored.orders.update(orderids)
        _place(product, stored, held)

    async def save(self) -> None:
        for sku, product in self._products.items():
            await self._save(product, self._stored[sku])

    async def _save(self, product: model.Product, stored: _Stored) -> None:
        statements, tx = _statements(), self._tx
        if stored.version is None:
            await tx.write(
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
            await tx.write(
                statements.set_version,
                {
                    "product": product.sku,
                    "expected": stored.version,
                    "version": product.version_number,
                    "out_of_stock": product.out_of_stock,
                },
                expect=1,
                stale=f"product {product.sku} is no longer at version {stored.version}",
            )
        stored.version, stored.out_of_stock = product.version_number, product.out_of_stock

        held = {(b.reference, line) for b in product.batches for line in b.allocations}
        for key in [k for k in stored.line_ids if k not in held]:
            line_id = stored.line_ids.pop(key)
            if line_id is None:  # written in this transaction, its id not read back
                line_id = await tx.scalar(
                    statements.line_id, {"orderid": key[1].orderid, "sku": product.sku}
                )
            await tx.write(statements.deallocate, {"line_id": line_id})
            await tx.write(statements.remove_line, {"line_id": line_id})

        new: list[tuple[str, model.OrderLine]] = []
        for batch in product.batches:
            ref = batch.reference
            quantities = (
                batch.purchased_quantity,
                batch.allocated_quantity,
                batch.eta,
                batch.version,
                batch.held_quantity,
            )
            if ref not in stored.batch_ids:
                stored.batch_ids[ref] = await tx.scalar(statements.add_batch, _row(batch))
            elif stored.quantities[ref] != quantities:
                await tx.write(
                    statements.set_quantities,
                    {
                        "batch_id": stored.batch_ids[ref],
                        "purchased": quantities[0],
                        "allocated": quantities[1],
                        "arrives": quantities[2],
                        "changed_at": quantities[3],
                        "kept": quantities[4],
                    },
                )
            stored.quantities[ref] = quantities
            new += [(ref, line) for line in batch.allocations if (ref, line) not in stored.line_ids]
        if new:
            await self._add_lines(product.sku, stored, new)
        await self._save_held(product, stored)

    async def _save_held(self, product: model.Product, stored: _Stored) -> None:
        statements, tx = _statements(), self._tx
        for holdid in sorted(stored.held - product.held.keys()):
            await tx.write(statements.remove_held, {"hold": holdid, "product": product.sku})
            stored.held.discard(holdid)
        for holdid in sorted(product.held.keys() - stored.held):
            held = product.held[holdid]
            params = {"hold": holdid, "product": product.sku, "units": held.qty}
            await tx.write(
                statements.add_held, {**params, "in_batch": stored.batch_ids[held.batchref]}
            )
            stored.held.add(holdid)

    async def _add_lines(
        self, sku: str, stored: _Stored, new: list[tuple[str, model.OrderLine]]
    ) -> None:
        statements, tx = _statements(), self._tx
        stored.orders.update(line.orderid for _, line in new)
        if tx.dialect != "postgresql":
            for ref, line in new:
                params = {"order": line.orderid, "product": sku, "units": line.qty}
                line_id = await tx.scalar(statements.add_line, params)
                to_batch = {"line_id": line_id, "to_batch": stored.batch_ids[ref]}
                await tx.execute(statements.allocate, to_batch)
                stored.line_ids[(ref, line)] = line_id
            return
        # PostgreSQL: written with what else the transaction holds back; the
        # lines' ids are read back only if this transaction deallocates one.
        if len(new) == 1:
            [(ref, line)] = new
            params = {"order": line.orderid, "product": sku, "units": line.qty}
            await tx.write(
                statements.add_allocated_line, {**params, "to_batch": stored.batch_ids[ref]}
            )
        else:
            await tx.write(
                statements.add_allocated_lines,
                {
                    "product": sku,
                    "orders": tuple(line.orderid for _, line in new),
                    "units": tuple(line.qty for _, line in new),
                    "to_batches": tuple(stored.batch_ids[ref] for ref, _ in new),
                },
            )
        for ref, line in new:
            stored.line_ids[(ref, line)] = None


def _place(
    product: model.Product, stored: _Stored, held: Iterable[tuple[int, int, str, int]]
) -> None:
    """Put the lines read, (batch id, line id, orderid, qty), in their batches."""
    refs = {batch_id: ref for ref, batch_id in stored.batch_ids.items()}
    batches = {b.reference: b for b in product.batches}
    for batch_id, line_id, orderid, qty in held:
        ref = refs[batch_id]
        line = model.OrderLine(orderid, product.sku, qty)
        batches[ref].allocations.add(line)
        stored.line_ids[(ref, line)] = line_id


def _row(batch: model.Batch) -> dict[str, Any]:
    return {
        "ref": batch.reference,
        "product": batch.sku,
        "purchased": batch.purchased_quantity,
        "allocated": batch.allocated_quantity,
        "arrives": batch.eta,
        "changed_at": batch.version,
        "kept": batch.held_quantity,
    }
