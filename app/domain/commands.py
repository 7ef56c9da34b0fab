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
    reason: str = "change_batch_quantity"  # where it came from: the book's message


@dataclass(frozen=True)
class ChangeBatch(Command):
    """Change a batch's quantity, its arrival, or both, for ``reason``.

    ``expected``: the batch's versions the caller would change it at (If-Match); None
    changes it whatever its version.
    """

    ref: str
    qty: int | None = None
    eta: date | None = None
    new_eta: bool = False  # whether ``eta`` is to be set (None is a date too: now)
    reason: str = "correction"
    note: str | None = None
    expected: frozenset[int] | None = None


@dataclass(frozen=True)
class Deallocate(Command):
    """Cancel the order's line of the sku: its units go back to its batch."""

    orderid: str
    sku: str


@dataclass(frozen=True)
class PlaceHold(Command):
    """Keep every line's units for ``ttl_s`` seconds, or none if any line cannot be kept."""

    holdid: str
    lines: tuple[tuple[str, int], ...]  # (sku, qty)
    ttl_s: int


@dataclass(frozen=True)
class ExtendHold(Command):
    holdid: str
    ttl_s: int  # from now


@dataclass(frozen=True)
class ConfirmHold(Command):
    """The hold's lines become the order's, allocated in the batches that held them."""

    holdid: str
    orderid: str


@dataclass(frozen=True)
class ReleaseHold(Command):
    holdid: str


@dataclass(frozen=True)
class ExpireHold(Command):
    """Free the hold's units if its time has passed (the deadline loop sends it)."""

    holdid: str
