"""The read side: queries on projection tables only, never the domain.

Each query is built once, with bound parameters, so SQLAlchemy compiles it
once per process and asyncpg prepares it once per connection.
"""

from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters.orm import allocations_view, batches_view

_a, _b = allocations_view.c, batches_view.c

_ALLOCATIONS = (
    select(_a.sku, _a.batchref)
    .where(_a.orderid == bindparam("orderid"), _a.batchref.is_not(None))
    .order_by(_a.sku)
)
_ALLOCATION = select(_a.batchref).where(
    _a.orderid == bindparam("orderid"), _a.sku == bindparam("sku"), _a.batchref.is_not(None)
)
_BATCH = select(_b.reference, _b.sku, _b.eta, _b.purchased, _b.allocated).where(
    _b.reference == bindparam("ref")
)
_PRODUCT = (
    select(_b.reference, _b.eta, (_b.purchased - _b.allocated).label("available"))
    .where(_b.sku == bindparam("sku"))
    .order_by(_b.eta.is_not(None), _b.eta, _b.reference)
)


async def allocations(engine: AsyncEngine, orderid: str) -> list[dict[str, str]]:
    async with engine.connect() as conn:
        result = await conn.execute(_ALLOCATIONS, {"orderid": orderid})
        return [{"sku": sku, "batchref": batchref} for sku, batchref in result]


async def allocation(engine: AsyncEngine, orderid: str, sku: str) -> dict[str, str] | None:
    async with engine.connect() as conn:
        batchref = await conn.scalar(_ALLOCATION, {"orderid": orderid, "sku": sku})
    return None if batchref is None else {"sku": sku, "batchref": batchref}


async def batch(engine: AsyncEngine, ref: str) -> dict[str, Any] | None:
    async with engine.connect() as conn:
        row = (await conn.execute(_BATCH, {"ref": ref})).one_or_none()
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


async def product(engine: AsyncEngine, sku: str) -> dict[str, Any] | None:
    """Stock of a sku: in the warehouse now, and per batch in allocation order."""
    async with engine.connect() as conn:
        rows = (await conn.execute(_PRODUCT, {"sku": sku})).all()
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
