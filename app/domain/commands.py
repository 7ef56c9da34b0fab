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
    """Set a batch's quantity, unless a change that came after this one was applied already.

    ``position`` is when the change came, as milliseconds and a sequence: a
    stream entry's id, or when the worker received a pub/sub message. One at
    or behind the position of the change applied last is skipped. None: as of
    now, after every change applied so far (a change over HTTP).
    """

    ref: str
    qty: int
    position: tuple[int, int] | None = None
