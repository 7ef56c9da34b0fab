"""Recomputing every projection from the write model.

The rebuild runs in one transaction: readers see the old rows until it
commits, then the new ones, never a half-built view.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import ColumnElement, Select, Table, case, delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.adapters import tables

Progress = Callable[[str, int, int], None]  # (view, rows done, rows in all)


async def rebuild_views(conn: AsyncConnection, progress: Progress, chunk: int = 5000) -> None:
    b, p, line, a = tables.batches.c, tables.products.c, tables.order_lines.c, tables.allocations.c
    batches = select(
        b.reference,
        b.sku,
        b.eta,
        b.purchased_quantity,
        b.allocated_quantity,
        b.held_quantity,
        b.version,
    )
    await _rewrite(conn, tables.batches_view, batches, b.id, progress, chunk)
    allocations = (
        select(line.orderid, line.sku, b.reference, p.version_number)
        .join(tables.allocations, a.orderline_id == line.id)
        .join(tables.batches, b.id == a.batch_id)
        .join(tables.products, p.sku == b.sku)
    )
    await _rewrite(conn, tables.allocations_view, allocations, line.id, progress, chunk)
    # What became of each line last, from the ledger: the write model keeps only the
    # lines batches hold.
    ledger = tables.stock_ledger.c
    last = (
        select(func.max(ledger.id).label("id"))
        .where(ledger.orderid.is_not(None))
        .group_by(ledger.orderid, ledger.sku)
        .subquery()
    )
    state = case(
        (ledger.kind.in_(("allocated", "reallocated")), "allocated"),
        (ledger.kind == "cancelled", "cancelled"),
        else_="out_of_stock",
    )
    placed = case((ledger.kind.in_(("allocated", "reallocated")), ledger.batchref), else_=None)
    lines = select(ledger.orderid, ledger.sku, ledger.line_qty, state, placed, ledger.version).join(
        last, last.c.id == ledger.id
    )
    await _rewrite(conn, tables.order_lines_view, lines, ledger.id, progress, chunk)


async def _rewrite(
    conn: AsyncConnection,
    view: Table,
    source: Select[Any],
    key: ColumnElement[int],
    progress: Progress,
    chunk: int,
) -> None:
    """Replace ``view``'s rows with ``source``'s, ``chunk`` rows at a time, in key order."""
    total = await conn.scalar(select(func.count()).select_from(source.subquery())) or 0
    await conn.execute(delete(view))
    columns = [c.name for c in view.columns]
    progress(view.name, 0, total)
    done, after = 0, None
    page = source.add_columns(key).order_by(key).limit(chunk)
    while True:
        rows = (await conn.execute(page if after is None else page.where(key > after))).all()
        if not rows:
            return
        await conn.execute(
            insert(view), [dict(zip(columns, row[:-1], strict=True)) for row in rows]
        )
        after = rows[-1][-1]
        done += len(rows)
        progress(view.name, done, total)
