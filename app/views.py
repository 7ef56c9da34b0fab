"""The read side: queries on projection tables only, never the domain.

Each query is a select() built once, with bound parameters. On PostgreSQL it
is compiled once per process and run on the asyncpg connection itself (taken
from SQLAlchemy's pool): a read is one statement with nothing to translate,
and SQLAlchemy's execution layer would otherwise cost as much CPU as the
rest of the request. asyncpg prepares it once per connection.
"""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, bindparam, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters.database import compiled, discard, is_unavailable, unavailable_reason
from app.adapters.orm import allocations_view, batches_view
from app.service_layer.unit_of_work import DatabaseUnavailable

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


async def _fetch(engine: AsyncEngine, query: Select[Any], **params: Any) -> Sequence[Any]:
    try:
        if engine.dialect.name != "postgresql":
            async with engine.connect() as conn:
                result: Sequence[Any] = (await conn.execute(query, params)).all()
                return result
        statement = compiled(query, engine.dialect)
        # Straight from the pool: the read engine runs in autocommit with no
        # reset on return, so handing the connection back involves no I/O.
        raw = await engine.raw_connection()
        try:
            rows: Sequence[Any] = await raw.driver_connection.fetch(  # type: ignore[union-attr]
                statement.sql, *(params[name] for name in statement.names)
            )
        except BaseException as e:
            discard(engine, raw, e)
            raise
        finally:
            raw.close()
        return rows
    except Exception as e:
        if is_unavailable(e):
            raise DatabaseUnavailable(unavailable_reason(e)) from e
        raise


async def allocations(engine: AsyncEngine, orderid: str) -> list[dict[str, str]]:
    rows = await _fetch(engine, _ALLOCATIONS, orderid=orderid)
    return [{"sku": sku, "batchref": batchref} for sku, batchref in rows]


async def allocation(engine: AsyncEngine, orderid: str, sku: str) -> dict[str, str] | None:
    rows = await _fetch(engine, _ALLOCATION, orderid=orderid, sku=sku)
    return {"sku": sku, "batchref": rows[0][0]} if rows else None


async def batch(engine: AsyncEngine, ref: str) -> dict[str, Any] | None:
    rows = await _fetch(engine, _BATCH, ref=ref)
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


async def product(engine: AsyncEngine, sku: str) -> dict[str, Any] | None:
    """Stock of a sku: in the warehouse now, and per batch in allocation order."""
    rows = await _fetch(engine, _PRODUCT, sku=sku)
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
