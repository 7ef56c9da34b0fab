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

from datetime import UTC, date
from functools import cache
from typing import Any

import orjson
from sqlalchemy import Select, bindparam, select, tuple_

from app.adapters.read_source import ReadSource
from app.adapters.tables import (
    allocations_view,
    batches_view,
    holds,
    order_lines_view,
    stock_ledger,
)
from app.clock import now

_a, _b, _o, _l, _h = (
    allocations_view.c,
    batches_view.c,
    order_lines_view.c,
    stock_ledger.c,
    holds.c,
)

_ALLOCATIONS = (
    select(_a.sku, _a.batchref)
    .where(_a.orderid == bindparam("orderid"), _a.batchref.is_not(None))
    .order_by(_a.sku)
)
_ALLOCATION = select(_a.batchref).where(
    _a.orderid == bindparam("orderid"), _a.sku == bindparam("sku"), _a.batchref.is_not(None)
)
_LINE = (_o.orderid, _o.sku, _o.state, _o.batchref, _o.qty)
_ORDER = select(*_LINE[1:]).where(_o.orderid == bindparam("orderid")).order_by(_o.sku)
_BATCH_COLUMNS = (_b.reference, _b.sku, _b.eta, _b.purchased, _b.allocated, _b.version, _b.held)
_BATCH = select(*_BATCH_COLUMNS).where(_b.reference == bindparam("ref"))
_PRODUCT = (
    select(_b.reference, _b.eta, (_b.purchased - _b.allocated - _b.held).label("available"))
    .where(_b.sku == bindparam("sku"))
    .order_by(_b.eta.is_not(None), _b.eta, _b.reference)
)
_HISTORY = (
    _l.id,
    _l.at,
    _l.kind,
    _l.sku,
    _l.batchref,
    _l.orderid,
    _l.holdid,
    _l.qty,
    _l.line_qty,
    _l.reason,
    _l.note,
    _l.request_id,
    _l.idempotency_key,
    _l.version,
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
    """Every line of the order the service accepted, and what became of it."""
    rows = await reads.fetch(_ORDER, {"orderid": orderid}, after)
    if not rows:
        return None
    return {
        "orderid": orderid,
        "lines": [{"sku": sku, "state": state, "batchref": ref} for sku, state, ref, _ in rows],
    }


def _batch(row: Any) -> dict[str, Any]:
    reference, sku, eta, purchased, allocated, _, held = row
    return {
        "reference": reference,
        "sku": sku,
        "eta": eta,
        "purchased": purchased,
        "allocated": allocated,
        "held": held,
        "available": purchased - allocated - held,
    }


def _versioned(row: Any) -> tuple[dict[str, Any], int]:
    return _batch(row), row[5]


async def batch(reads: ReadSource, ref: str, after: str | None = None) -> dict[str, Any] | None:
    found = await versioned_batch(reads, ref, after)
    return None if found is None else found[0]


async def versioned_batch(
    reads: ReadSource, ref: str, after: str | None = None
) -> tuple[dict[str, Any], int] | None:
    """The batch, and its version (which changes with its quantity, eta or allocations)."""
    rows = await reads.fetch(_BATCH, {"ref": ref}, after)
    return _versioned(rows[0]) if rows else None


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


# Lists and histories come a page at a time, by keyset: a page is the rows past
# the last key of the one before, in key order, so that paging through never
# repeats or misses a row that existed before the first page, whatever is added.
# Each query is built once per set of filters, with bound parameters: the
# driver prepares it once per connection (no statement is compiled per read).
Page = tuple[list[dict[str, Any]], Any]  # the items, and the key to go on from (None: done)


@cache
def _batches_query(by_sku: bool, by_eta: bool) -> Select[Any]:
    query = (
        select(*_BATCH_COLUMNS)
        .where(_b.reference > bindparam("after"))
        .order_by(_b.reference)
        .limit(bindparam("limit"))
    )
    if by_sku:
        query = query.where(_b.sku == bindparam("sku"))
    if by_eta:
        query = query.where((_b.eta < bindparam("eta_before")) | _b.eta.is_(None))
    return query


@cache
def _lines_query(by_sku: bool, by_state: bool) -> Select[Any]:
    query = (
        select(*_LINE)
        .where(tuple_(_o.orderid, _o.sku) > tuple_(bindparam("orderid"), bindparam("sku_after")))
        .order_by(_o.orderid, _o.sku)
        .limit(bindparam("limit"))
    )
    if by_sku:
        query = query.where(_o.sku == bindparam("sku"))
    if by_state:
        query = query.where(_o.state == bindparam("state"))
    return query


@cache
def _history_query(of_order: bool) -> Select[Any]:
    key = _l.orderid if of_order else _l.sku
    return (
        select(*_HISTORY)
        .where(key == bindparam("key"), _l.id > bindparam("after"))
        .order_by(_l.id)
        .limit(bindparam("limit"))
    )


async def batches(
    reads: ReadSource,
    limit: int,
    after_ref: str | None = None,
    sku: str | None = None,
    eta_before: date | None = None,
) -> Page:
    """Batches by reference; of ``sku``; arriving before ``eta_before`` (stock here now too)."""
    params = {"after": after_ref or "", "limit": limit + 1, "sku": sku, "eta_before": eta_before}
    query = _batches_query(sku is not None, eta_before is not None)
    rows = await reads.fetch(query, params)
    items = [_batch(row) for row in rows[:limit]]
    return items, (items[-1]["reference"] if len(rows) > limit else None)


async def order_lines(
    reads: ReadSource,
    limit: int,
    after: tuple[str, str] | None = None,
    sku: str | None = None,
    state: str | None = None,
) -> Page:
    """Accepted lines by order, then sku; of ``sku``; in ``state``."""
    orderid, sku_after = after or ("", "")
    params = {"orderid": orderid, "sku_after": sku_after, "limit": limit + 1}
    params |= {"sku": sku, "state": state}
    rows = await reads.fetch(_lines_query(sku is not None, state is not None), params)
    items = [
        {"orderid": o, "sku": s, "state": state, "batchref": ref, "qty": qty}
        for o, s, state, ref, qty in rows[:limit]
    ]
    last = (items[-1]["orderid"], items[-1]["sku"]) if len(rows) > limit else None
    return items, last


async def history(
    reads: ReadSource,
    limit: int,
    after_id: int | None,
    *,
    orderid: str | None = None,
    sku: str | None = None,
) -> Page:
    """The ledger's rows of an order, or of a product, oldest first."""
    params = {"key": orderid if orderid is not None else sku, "after": after_id or 0}
    rows = await reads.fetch(_history_query(orderid is not None), {**params, "limit": limit + 1})
    items = [_entry(row) for row in rows[:limit]]
    return items, (rows[limit - 1][0] if len(rows) > limit else None)


def _entry(row: Any) -> dict[str, Any]:
    _, at, kind, sku, batchref, orderid, holdid, qty, line_qty, reason, note, request, key, v = row
    return {
        "at": at.replace(tzinfo=UTC),  # kept as naive UTC
        "kind": kind,
        "sku": sku,
        "batchref": batchref,
        "orderid": orderid,
        "holdid": holdid,
        "qty": qty,
        "line_qty": line_qty,
        "reason": reason,
        "note": note,
        "request_id": request,
        "idempotency_key": key,
        "version": v,
    }


_HOLD = select(_h.state, _h.expires_at, _h.orderid, _h.lines).where(_h.holdid == bindparam("hold"))


async def hold(reads: ReadSource, holdid: str, after: str | None = None) -> dict[str, Any] | None:
    """The hold: its state (one held past its time is expired, whether or not its units are
    freed yet: they are within moments), its deadline and its lines."""
    rows = await reads.fetch(_HOLD, {"hold": holdid}, after)
    if not rows:
        return None
    state, expires_at, orderid, lines = rows[0]
    if state == "held" and expires_at <= now():
        state = "expired"
    return {
        "holdid": holdid,
        "state": state,
        "expires_at": expires_at.replace(tzinfo=UTC),
        "orderid": orderid,
        "lines": orjson.loads(lines) if isinstance(lines, str) else lines,
    }
