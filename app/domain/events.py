"""Events: facts the Product aggregate reports. Past-tense names.

Every event has an ``id`` of its own (consumers de-duplicate on it), and
those about a product carry its ``version`` after the change that raised
them, so that a projection can tell a stale event from a new one.
"""

from dataclasses import dataclass, field
from datetime import date
from uuid import uuid4


def _new_id() -> str:
    return uuid4().hex


@dataclass(frozen=True)
class Event:
    id: str = field(default_factory=_new_id, kw_only=True, compare=False)


@dataclass(frozen=True)
class BatchCreated(Event):
    sku: str
    ref: str
    qty: int
    eta: date | None
    version: int


@dataclass(frozen=True)
class BatchQuantityChanged(Event):
    sku: str
    ref: str
    qty: int
    version: int


@dataclass(frozen=True)
class Allocated(Event):
    orderid: str
    sku: str
    qty: int
    batchref: str
    version: int


@dataclass(frozen=True)
class Deallocated(Event):
    orderid: str
    sku: str
    qty: int
    batchref: str
    version: int


@dataclass(frozen=True)
class OutOfStock(Event):
    sku: str
