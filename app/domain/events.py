"""Events: facts the Product aggregate reports. Past-tense names.

Every event carries the product's ``version`` after the change that raised
it, so a projection can apply events in aggregate order and ignore stale ones.
"""

from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True)
class Event:
    pass


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
