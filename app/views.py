"""The read side: queries on projection tables only, never the domain."""

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters.orm import allocations_view, batches_view

_allocations = (
    select(allocations_view.c.sku, allocations_view.c.batchref)
    .where(allocations_view.c.batchref.is_not(None))
    .order_by(allocations_view.c.sku)
)


async def allocations(engine: AsyncEngine, orderid: str) -> list[dict[str, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(_allocations.where(allocations_view.c.orderid == orderid))
        return [{"sku": r.sku, "batchref": r.batchref} for r in rows]


async def batch(engine: AsyncEngine, ref: str) -> dict[str, Any] | None:
    v = batches_view.c
    query = select(v.reference, v.sku, v.eta, v.purchased, v.allocated).where(v.reference == ref)
    async with engine.connect() as conn:
        row = (await conn.execute(query)).one_or_none()
    if row is None:
        return None
    return {
        "reference": row.reference,
        "sku": row.sku,
        "eta": row.eta,
        "purchased": row.purchased,
        "allocated": row.allocated,
        "available": row.purchased - row.allocated,
    }


async def allocation(engine: AsyncEngine, orderid: str, sku: str) -> dict[str, str] | None:
    query = _allocations.where(allocations_view.c.orderid == orderid, allocations_view.c.sku == sku)
    async with engine.connect() as conn:
        row = (await conn.execute(query)).one_or_none()
    return None if row is None else {"sku": row.sku, "batchref": row.batchref}


async def product(engine: AsyncEngine, sku: str) -> dict[str, Any] | None:
    """Stock of a sku: in the warehouse now, and per batch in allocation order."""
    v = batches_view.c
    query = (
        select(v.reference, v.eta, (v.purchased - v.allocated).label("available"))
        .where(v.sku == sku)
        .order_by(v.eta.is_not(None), v.eta, v.reference)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    if not rows:
        return None
    return {
        "sku": sku,
        "available_now": sum(r.available for r in rows if r.eta is None),
        "incoming": sum(r.available for r in rows if r.eta is not None),
        "batches": [
            {"reference": r.reference, "eta": r.eta, "available": r.available} for r in rows
        ],
    }
