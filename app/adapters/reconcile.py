"""Drift: where the write model, its ledger and its read models disagree.

Each is a plain reading, in one transaction (a snapshot on PostgreSQL):
every batch's counters against the sum of its ledger rows, and each read
model against the write model. None is expected; one means a bug or a change
made around the service, and ``allocation rebuild-views`` mends the read models.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.adapters import tables
from app.adapters.tables import HELD, PURCHASED

b, bv, a, av = (
    tables.batches.c,
    tables.batches_view.c,
    tables.allocations.c,
    tables.allocations_view.c,
)
line, ov, ledger = tables.order_lines.c, tables.order_lines_view.c, tables.stock_ledger.c
hl, h = tables.hold_lines.c, tables.holds.c


async def drifts(conn: AsyncConnection) -> AsyncIterator[str]:
    """Each disagreement found, as a line for a person to read."""
    purchased = func.sum(case((ledger.kind.in_(PURCHASED), ledger.qty), else_=0))
    kept = -func.sum(case((ledger.kind.in_(HELD), ledger.qty), else_=0))
    allocated = -func.sum(case((ledger.kind.in_((*PURCHASED, *HELD)), 0), else_=ledger.qty))
    sums = (
        select(
            ledger.batchref,
            purchased.label("purchased"),
            allocated.label("allocated"),
            kept.label("held"),
        )
        .where(ledger.batchref.is_not(None))
        .group_by(ledger.batchref)
        .subquery()
    )
    lines_held = select(hl.batch_id, func.sum(hl.qty).label("qty")).group_by(hl.batch_id).subquery()
    counted = (
        select(
            b.reference,
            b.purchased_quantity,
            b.allocated_quantity,
            b.held_quantity,
            sums.c.purchased,
            sums.c.allocated,
            sums.c.held,
            lines_held.c.qty,
        )
        .outerjoin(sums, sums.c.batchref == b.reference)
        .outerjoin(lines_held, lines_held.c.batch_id == b.id)
    )
    for ref, *counts, in_lines in await _rows(conn, counted):
        write, ledgered = tuple(counts[:3]), tuple(n or 0 for n in counts[3:])
        if write != ledgered:
            yield f"batch {ref}: {_counts(write)}; its ledger rows add up to {_counts(ledgered)}"
        if (in_lines or 0) != write[2]:
            yield f"batch {ref}: holds {write[2]} units, its holds' lines {in_lines or 0}"
    orphans = (
        select(h.holdid, h.state, func.count(hl.sku))
        .outerjoin(tables.hold_lines, hl.holdid == h.holdid)
        .group_by(h.holdid, h.state)
    )
    for holdid, state, kept_lines in await _rows(conn, orphans):
        if state != "held" and kept_lines:
            yield f"hold {holdid}: {state}, yet {kept_lines} of its lines keep units"

    viewed = select(
        b.reference,
        b.sku,
        b.eta,
        b.purchased_quantity,
        b.allocated_quantity,
        b.held_quantity,
        b.version,
        bv.reference,
        bv.sku,
        bv.eta,
        bv.purchased,
        bv.allocated,
        bv.held,
        bv.version,
    ).outerjoin(tables.batches_view, bv.reference == b.reference)
    for row in await _rows(conn, viewed):
        if row[7] is None:
            yield f"batch {row[0]}: not in batches_view"
        elif tuple(row[1:7]) != tuple(row[8:14]):
            yield f"batch {row[0]}: batches_view has {tuple(row[8:14])}, the batch {row[1:7]}"
    extra = select(bv.reference).outerjoin(tables.batches, b.reference == bv.reference)
    for (ref,) in await _rows(conn, extra.where(b.reference.is_(None))):
        yield f"batches_view has {ref}, which is no batch"

    held_lines = (
        select(line.orderid, line.sku, b.reference, av.batchref, ov.state, ov.batchref)
        .join(tables.allocations, a.orderline_id == line.id)
        .join(tables.batches, b.id == a.batch_id)
        .outerjoin(tables.allocations_view, and_(av.orderid == line.orderid, av.sku == line.sku))
        .outerjoin(tables.order_lines_view, and_(ov.orderid == line.orderid, ov.sku == line.sku))
    )
    for orderid, sku, ref, shown, state, placed in await _rows(conn, held_lines):
        if shown != ref:
            yield f"line {orderid}/{sku}: in batch {ref}, allocations_view says {shown}"
        if (state, placed) != ("allocated", ref):
            yield f"line {orderid}/{sku}: in batch {ref}, order_lines_view says {state} {placed}"
    ghosts = (
        select(av.orderid, av.sku, av.batchref)
        .outerjoin(tables.order_lines, and_(line.orderid == av.orderid, line.sku == av.sku))
        .outerjoin(tables.allocations, a.orderline_id == line.id)
        .outerjoin(tables.batches, b.id == a.batch_id)
        .where(av.batchref.is_not(None), or_(b.reference.is_(None), b.reference != av.batchref))
    )
    for orderid, sku, ref in await _rows(conn, ghosts):
        yield f"line {orderid}/{sku}: allocations_view says batch {ref}, which holds it not"
    allocated_views = select(ov.orderid, ov.sku, ov.batchref).where(
        ov.state == "allocated",
        ~select(line.id)
        .join(tables.allocations, a.orderline_id == line.id)
        .where(line.orderid == ov.orderid, line.sku == ov.sku)
        .exists(),
    )
    for orderid, sku, ref in await _rows(conn, allocated_views):
        yield f"line {orderid}/{sku}: order_lines_view says allocated to {ref}, no batch holds it"


def _counts(counts: tuple[int, ...]) -> str:
    names = ("purchased", "allocated", "held")
    return ", ".join(f"{name} {n}" for name, n in zip(names, counts, strict=True))


async def counts(conn: AsyncConnection) -> tuple[int, ...]:
    """Batches, allocated lines, holds and ledger rows looked at."""
    found = []
    for table in (tables.batches, tables.allocations, tables.holds, tables.stock_ledger):
        found.append(int(await conn.scalar(select(func.count()).select_from(table)) or 0))
    return tuple(found)


async def _rows(conn: AsyncConnection, query: Any) -> list[Any]:
    return list((await conn.execute(query)).all())
