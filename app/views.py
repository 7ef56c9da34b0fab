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
