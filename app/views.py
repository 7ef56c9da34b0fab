"""The read side: queries on projection tables only, never the domain.

Each query is a select() built once, with bound parameters. On PostgreSQL it
is compiled once per process and run on the asyncpg connection itself (taken
from SQLAlchemy's pool): a read is one statement with nothing to translate,
and SQLAlchemy's execution layer would otherwise cost as much CPU as the
rest of the request. asyncpg prepares it once per connection.

Where each read runs, the replica or the primary, is the read source's
business (app.adapters.read_source); ``after`` is a write's position, for a
read that must see that write.
"""

from typing import Any

from sqlalchemy import bindparam, exists, null, select, union_all

from app.adapters.read_source import ReadSource
from app.adapters.tables import allocations_view, batches_view, refused_lines_view

_a, _b, _r = allocations_view.c, batches_view.c, refused_lines_view.c

_ALLOCATIONS = (
    select(_a.sku, _a.batchref)
    .where(_a.orderid == bindparam("orderid"), _a.batchref.is_not(None))
    .order_by(_a.sku)
)
_ALLOCATION = select(_a.batchref).where(
    _a.orderid == bindparam("orderid"), _a.sku == bindparam("sku"), _a.batchref.is_not(None)
)
# Each line of the order: allocated to a batch, or not (no batch could take
# it, or it lost its batch and no other could). A refused line since
# allocated is told by its allocation.
_ORDER = union_all(
    select(_a.sku, _a.batchref).where(_a.orderid == bindparam("orderid")),
    select(_r.sku, null().label("batchref")).where(
        _r.orderid == bindparam("orderid"),
        ~exists().where(_a.orderid == _r.orderid, _a.sku == _r.sku),
    ),
).order_by("sku")
_BATCH = select(_b.reference, _b.sku, _b.eta, _b.purchased, _b.allocated).where(
    _b.reference == bindparam("ref")
)
_PRODUCT = (
    select(_b.reference, _b.eta, (_b.purchased - _b.allocated).label("available"))
    .where(_b.sku == bindparam("sku"))
    .order_by(_b.eta.is_not(None), _b.eta, _b.reference)
)


async def allocations(
    reads: ReadSource, orderid: str, after: str | None = None
) -> list[dict[str, str]]:
    rows = await reads.fetch(_ALLOCATIONS, {"orderid": orderid}, after)
    return [{"sku": sku, "batchref": batchref} for sku, batchref in rows]


async def allocation(
    reads: ReadSource, orderid: str, sku: str, after: str | None = None
) -> dict[str, str] | None:
    rows = await reads.fetch(_ALLOCATION, {"orderid": orderid, "sku": sku}, after)
    return {"sku": sku, "batchref": rows[0][0]} if rows else None


async def order(reads: ReadSource, orderid: str, after: str | None = None) -> dict[str, Any] | None:
    """Every line of the order the service accepted, and whether it is allocated."""
    rows = await reads.fetch(_ORDER, {"orderid": orderid}, after)
    if not rows:
        return None
    return {
        "orderid": orderid,
        "lines": [
            {"sku": sku, "state": "allocated" if ref else "out_of_stock", "batchref": ref}
            for sku, ref in rows
        ],
    }


async def batch(reads: ReadSource, ref: str, after: str | None = None) -> dict[str, Any] | None:
    rows = await reads.fetch(_BATCH, {"ref": ref}, after)
    if not rows:
        return None
    reference, sku, eta, purchased, allocated = rows[0]
    return {
        "reference": reference,
        "sku": sku,
        "eta": eta,
        "purchased": purchased,
        "allocated": allocated,
        "available": purchased - allocated,
    }


async def product(reads: ReadSource, sku: str, after: str | None = None) -> dict[str, Any] | None:
    """Stock of a sku: in the warehouse now, and per batch in allocation order."""
    rows = await reads.fetch(_PRODUCT, {"sku": sku}, after)
    if not rows:
        return None
    return {
        "sku": sku,
        "available_now": sum(available for _, eta, available in rows if eta is None),
        "incoming": sum(available for _, eta, available in rows if eta is not None),
        "batches": [
            {"reference": ref, "eta": eta, "available": available} for ref, eta, available in rows
        ],
    }
