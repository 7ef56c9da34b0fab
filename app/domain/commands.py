"""Commands: what a caller asks the service to do. Imperative names."""

from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True)
class Command:
    pass


@dataclass(frozen=True)
class CreateBatch(Command):
    ref: str
    sku: str
    qty: int
    eta: date | None = None


@dataclass(frozen=True)
class Allocate(Command):
    orderid: str
    sku: str
    qty: int


@dataclass(frozen=True)
class ChangeBatchQuantity(Command):
    ref: str
    qty: int
    # Where the change stands among those of its stream (the entry's id, as
    # milliseconds and sequence): one behind a change applied already is
    # skipped. None: applied as it comes.
    position: tuple[int, int] | None = None
