"""Events: facts the Product aggregate reports. Past-tense names.

Every event has an ``id`` of its own (consumers de-duplicate on it), the
time it happened, and the id of the request that caused it, when there was
one (and its ``Idempotency-Key``), and the trace context of that work (a W3C
``traceparent``) when it was traced. Those about a product carry its
``version`` after the change that raised them, so that a projection can tell
a stale event from a new one.
"""

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from uuid import uuid4


def _new_id() -> str:
    return uuid4().hex


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Event:
    id: str = field(default_factory=_new_id, kw_only=True, compare=False)
    occurred_at: datetime = field(default_factory=_now, kw_only=True, compare=False)
    request_id: str | None = field(default=None, kw_only=True, compare=False)
    idempotency_key: str | None = field(default=None, kw_only=True, compare=False)
    traceparent: str | None = field(default=None, kw_only=True, compare=False)


@dataclass(frozen=True)
class BatchCreated(Event):
    sku: str
    ref: str
    qty: int
    eta: date | None
    version: int


@dataclass(frozen=True)
class BatchQuantityChanged(Event):
    """The batch holds ``qty`` units now, ``by`` more than before (fewer, if negative)."""

    sku: str
    ref: str
    qty: int
    version: int
    by: int = 0
    reason: str = "correction"
    note: str | None = None


@dataclass(frozen=True)
class BatchEtaChanged(Event):
    """The batch arrives on ``eta`` now (None: it is in the warehouse)."""

    sku: str
    ref: str
    eta: date | None
    version: int


@dataclass(frozen=True)
class Allocated(Event):
    orderid: str
    sku: str
    qty: int
    batchref: str
    version: int
    reallocated: bool = False  # placed again, having lost its batch (Deallocated)


@dataclass(frozen=True)
class LineCancelled(Event):
    """The order cancelled its line of ``qty`` units: they are free again in ``batchref``.

    A line that held no batch (out of stock) gives back nothing: ``batchref`` None.
    The book's Deallocated is another fact: a line that lost its batch, to be placed again.
    """

    orderid: str
    sku: str
    qty: int
    batchref: str | None
    version: int


@dataclass(frozen=True)
class Deallocated(Event):
    orderid: str
    sku: str
    qty: int
    batchref: str
    version: int


@dataclass(frozen=True)
class LineRefused(Event):
    """No batch of the sku could take the order's line: it is not allocated, and holds nothing.

    ``version`` is the product's when it refused the line: a refusal changes no version.
    """

    orderid: str
    sku: str
    qty: int
    version: int


@dataclass(frozen=True)
class OutOfStock(Event):
    """A stock-out of the sku began: ``orderid``'s line was the first no batch could take.

    It lasts until stock of the sku is added again; lines refused meanwhile
    raise LineRefused only. (Events stored before orders were named have none.)
    """

    sku: str
    orderid: str | None = None


@dataclass(frozen=True)
class LineHeld(Event):
    """``qty`` units of ``batchref`` are kept for the hold: no allocation takes them."""

    holdid: str
    sku: str
    qty: int
    batchref: str
    version: int


@dataclass(frozen=True)
class LineReleased(Event):
    """The units the hold kept of ``batchref`` are free again: ``why`` released, expired,
    confirmed (they went to the order's line, Allocated) or lost (the batch's quantity fell)."""

    holdid: str
    sku: str
    qty: int
    batchref: str
    version: int
    why: str


@dataclass(frozen=True)
class HeldUnits:
    sku: str
    qty: int
    batchref: str | None


@dataclass(frozen=True)
class HoldChanged(Event):
    """The hold is ``state`` now (held, confirmed, released, expired), until ``expires_at``."""

    holdid: str
    state: str
    expires_at: datetime
    orderid: str | None
    lines: tuple[HeldUnits, ...]
    # The hold's own version (not a product's): ``version`` would put it in a product's order.
    hold_version: int = 0
