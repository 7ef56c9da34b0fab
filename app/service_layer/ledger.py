"""The stock ledger: each event that changes a batch's units, as the row it appends.

Recorded inline, in the transaction of the change (app.service_layer.handlers).
A row's ``qty`` is the change to its batch's available units: units added or
purchased more are positive, units allocated negative, units a cancelled or
deallocated line gives back positive. A product's rows therefore add up to
what it has available; its batches' purchased units are the sum of their
``added`` and ``changed`` rows, their held units minus the sum of their hold rows
(``held``, then ``released``, ``expired``, ``confirmed`` or ``lost``, naming the hold),
their allocated units minus the sum of the rest (``allocation reconcile`` checks
all three). Lines refused or cancelled out of stock have rows of 0, so that an
order's history tells all that became of it.
"""

from __future__ import annotations

from typing import Any

from app.adapters.projections import LedgerRow
from app.domain import events
from app.service_layer.unit_of_work import AbstractUnitOfWork


def row(event: events.Event) -> LedgerRow:
    """The ledger row of ``event``."""
    base: dict[str, Any] = {
        "at": event.occurred_at.replace(tzinfo=None),  # naive UTC, as the tables keep time
        "sku": getattr(event, "sku"),  # noqa: B009 - every event here has one
        "version": getattr(event, "version"),  # noqa: B009
        "request_id": event.request_id,
        "idempotency_key": event.idempotency_key,
    }
    match event:
        case events.BatchCreated():
            return LedgerRow(kind="added", batchref=event.ref, orderid=None, qty=event.qty, **base)
        case events.BatchQuantityChanged():
            return LedgerRow(
                kind="changed",
                batchref=event.ref,
                orderid=None,
                qty=event.by,
                reason=event.reason,
                note=event.note,
                **base,
            )
        case events.Allocated():
            kind = "reallocated" if event.reallocated else "allocated"
            return _line(kind, event.batchref, event.orderid, -event.qty, event.qty, base)
        case events.Deallocated():
            return _line("deallocated", event.batchref, event.orderid, event.qty, event.qty, base)
        case events.LineCancelled():
            freed = event.qty if event.batchref is not None else 0
            return _line("cancelled", event.batchref, event.orderid, freed, event.qty, base)
        case events.LineRefused():
            return _line("refused", None, event.orderid, 0, event.qty, base)
        case events.LineHeld():
            return _held("held", event.batchref, event.holdid, -event.qty, event.qty, base)
        case events.LineReleased():
            return _held(event.why, event.batchref, event.holdid, event.qty, event.qty, base)
    raise TypeError(f"no ledger row for {type(event).__name__}")


def _line(
    kind: str, batchref: str | None, orderid: str, qty: int, line_qty: int, base: dict[str, Any]
) -> LedgerRow:
    return LedgerRow(
        kind=kind, batchref=batchref, orderid=orderid, qty=qty, line_qty=line_qty, **base
    )


def _held(
    kind: str, batchref: str, holdid: str, qty: int, line_qty: int, base: dict[str, Any]
) -> LedgerRow:
    return LedgerRow(
        kind=kind,
        batchref=batchref,
        orderid=None,
        holdid=holdid,
        qty=qty,
        line_qty=line_qty,
        **base,
    )


async def record(event: events.Event, uow: AbstractUnitOfWork) -> None:
    await uow.read_model.recorded(row(event))
