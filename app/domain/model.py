"""The allocation domain: Product is the aggregate, Batch and OrderLine live inside it.

A Batch's ``allocated_quantity`` is the authoritative count of what it has
allocated. Its ``allocations`` set holds the order lines loaded for the
command at hand, not necessarily all of them: the repository loads the one
line an Allocate needs to stay idempotent, or every line of the batch whose
quantity a ChangeBatchQuantity lowers. That is what keeps the cost of an
allocation flat however many lines a product has collected.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from datetime import date, datetime

from app.domain import events


class DuplicateBatch(Exception):
    pass


class LineConflict(Exception):
    pass


class VersionMismatch(Exception):
    """The batch is no longer at the version the caller saw (its If-Match)."""


class HoldEnded(Exception):
    """The hold is no longer held: confirmed, released or expired."""


@dataclass(frozen=True)
class HeldLine:
    """Units a hold keeps of one batch, out of reach of allocations, until it ends."""

    holdid: str
    qty: int
    batchref: str


@dataclass(unsafe_hash=True)
class OrderLine:
    orderid: str
    sku: str
    qty: int


class Batch:
    def __init__(self, ref: str, sku: str, qty: int, eta: date | None) -> None:
        self.reference = ref
        self.sku = sku
        self.eta = eta
        self.purchased_quantity = qty
        self.allocated_quantity = 0
        self.held_quantity = 0  # kept for holds (Product.held has those loaded)
        self.allocations: set[OrderLine] = set()
        # The product's version when the batch last changed: quantity, eta or allocations.
        self.version = 0

    def __repr__(self) -> str:
        return f"<Batch {self.reference}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Batch) and other.reference == self.reference

    def __hash__(self) -> int:
        return hash(self.reference)

    def __gt__(self, other: Batch) -> bool:
        if self.eta is None:
            return False
        if other.eta is None:
            return True
        return self.eta > other.eta

    @property
    def available_quantity(self) -> int:
        return self.purchased_quantity - self.allocated_quantity - self.held_quantity

    def can_allocate(self, line: OrderLine) -> bool:
        return self.sku == line.sku and self.available_quantity >= line.qty

    def allocate(self, line: OrderLine) -> None:
        self.allocations.add(line)
        self.allocated_quantity += line.qty

    def deallocate_one(self) -> OrderLine:
        """Take a line off: of those loaded, the one of the greatest orderid."""
        line = max(self.allocations, key=lambda held: held.orderid)
        self.deallocate(line)
        return line

    def deallocate(self, line: OrderLine) -> None:
        self.allocations.remove(line)
        self.allocated_quantity -= line.qty


class Product:
    def __init__(
        self,
        sku: str,
        batches: list[Batch],
        version_number: int = 0,
        out_of_stock: bool = False,
    ) -> None:
        self.sku = sku
        self.batches = batches
        self.version_number = version_number
        # From the first line no batch could take until stock is added again.
        self.out_of_stock = out_of_stock
        # The holds loaded for the command at hand, by hold: of one hold, or of a batch
        # whose quantity changes (as with ``allocations``).
        self.held: dict[str, HeldLine] = {}
        self.events: list[events.Event] = []

    def add_batch(self, batch: Batch) -> None:
        """Add a batch; repeating an identical batch changes nothing."""
        existing = self._batch(batch.reference)
        if existing is not None:
            same = (existing.sku, existing.purchased_quantity, existing.eta) == (
                batch.sku,
                batch.purchased_quantity,
                batch.eta,
            )
            if same:
                return
            raise DuplicateBatch(f"Batch {batch.reference} already exists with different details")
        self.batches.append(batch)
        self.version_number += 1
        batch.version = self.version_number
        self.out_of_stock = False
        self.events.append(
            events.BatchCreated(
                sku=self.sku,
                ref=batch.reference,
                qty=batch.purchased_quantity,
                eta=batch.eta,
                version=self.version_number,
            )
        )

    def allocate(self, line: OrderLine, reallocating: bool = False) -> str | None:
        """Allocate a line to the best batch and return its reference.

        Returns None when out of stock. Allocating a line the order already
        holds changes nothing; the same order asking for a different quantity
        of this sku is a LineConflict. ``reallocating``: the line lost its batch.
        """
        holding = self._holding(line.orderid)
        if holding is not None:
            holder, held = holding
            if held.qty != line.qty:
                raise LineConflict(
                    f"Order {line.orderid} already has {held.qty} of {line.sku}"
                    f" allocated to batch {holder.reference}"
                )
            return holder.reference
        batch = next((b for b in sorted(self.batches) if b.can_allocate(line)), None)
        if batch is None:
            self.events.append(
                events.LineRefused(
                    orderid=line.orderid,
                    sku=line.sku,
                    qty=line.qty,
                    version=self.version_number,
                )
            )
            if not self.out_of_stock:
                self.out_of_stock = True
                self.events.append(events.OutOfStock(sku=line.sku, orderid=line.orderid))
            return None
        self._place(batch, line, reallocating)
        return batch.reference

    def _place(self, batch: Batch, line: OrderLine, reallocating: bool = False) -> None:
        batch.allocate(line)
        self._changed(batch)
        self.events.append(
            events.Allocated(
                orderid=line.orderid,
                sku=line.sku,
                qty=line.qty,
                batchref=batch.reference,
                version=self.version_number,
                reallocated=reallocating,
            )
        )

    def can_hold(self, holdid: str, qty: int) -> bool:
        return holdid in self.held or any(b.available_quantity >= qty for b in self.batches)

    def hold(self, holdid: str, qty: int) -> str | None:
        """Keep ``qty`` units for the hold in the batch an allocation would take, and return
        its reference; None, changing nothing, if no batch has them. Holding again changes
        nothing."""
        if holdid in self.held:
            return self.held[holdid].batchref
        batch = next((b for b in sorted(self.batches) if b.available_quantity >= qty), None)
        if batch is None:
            return None
        batch.held_quantity += qty
        self.held[holdid] = HeldLine(holdid, qty, batch.reference)
        self._changed(batch)
        self.events.append(
            events.LineHeld(
                holdid=holdid,
                sku=self.sku,
                qty=qty,
                batchref=batch.reference,
                version=self.version_number,
            )
        )
        return batch.reference

    def release(self, holdid: str, why: str = "released") -> HeldLine | None:
        """Free the units the hold keeps (``why``: released, expired, confirmed, lost)."""
        held = self.held.pop(holdid, None)
        if held is None:
            return None
        batch = self._batch(held.batchref)
        assert batch is not None
        batch.held_quantity -= held.qty
        self._changed(batch)
        self.events.append(
            events.LineReleased(
                holdid=holdid,
                sku=self.sku,
                qty=held.qty,
                batchref=held.batchref,
                version=self.version_number,
                why=why,
            )
        )
        return held

    def confirm(self, holdid: str, orderid: str, qty: int) -> None:
        """The hold's line becomes the order's line, allocated in the batch that held it (if
        the hold lost its units, placed as any new line is). An order that has a line of
        the sku already is a LineConflict: an order holds one line of a sku."""
        line = OrderLine(orderid, self.sku, qty)
        holding = self._holding(orderid)
        if holding is not None:
            raise LineConflict(f"Order {orderid} already has a line of {self.sku}")
        held = self.release(holdid, "confirmed")
        batch = None if held is None else self._batch(held.batchref)
        if batch is None:
            self.allocate(line)
        else:
            self._place(batch, line)

    def cancel(self, orderid: str) -> bool:
        """Take the order's line off its batch, its units free again; False if it holds none."""
        holding = self._holding(orderid)
        if holding is None:
            return False
        batch, line = holding
        batch.deallocate(line)
        self._changed(batch)
        self.events.append(
            events.LineCancelled(
                orderid=orderid,
                sku=self.sku,
                qty=line.qty,
                batchref=batch.reference,
                version=self.version_number,
            )
        )
        return True

    def cancel_unplaced(self, orderid: str, qty: int) -> None:
        """Cancel the order's line of ``qty`` no batch holds (out of stock): nothing to free."""
        self.version_number += 1
        self.events.append(
            events.LineCancelled(
                orderid=orderid, sku=self.sku, qty=qty, batchref=None, version=self.version_number
            )
        )

    def change_batch(
        self,
        ref: str,
        qty: int | None = None,
        eta: date | None = None,
        *,
        new_eta: bool = False,
        reason: str = "correction",
        note: str | None = None,
        expected: Collection[int] | None = None,
    ) -> None:
        """Change a batch's quantity (``qty``), its arrival (``eta``, if ``new_eta``), or both.

        ``expected``: the batch's versions the caller would change it at (an If-Match);
        another is a VersionMismatch, and nothing changes. A lower quantity takes lines
        off the batch, to be placed again.
        """
        if qty is not None and qty < 0:
            raise ValueError(f"A batch cannot hold {qty} units")
        batch = self._batch(ref)
        if batch is None:
            raise KeyError(ref)
        if expected is not None and batch.version not in expected:
            named = ", ".join(str(v) for v in sorted(expected)) or "none"
            raise VersionMismatch(f"Batch {ref} is at version {batch.version}, not {named}")
        if qty in (None, batch.purchased_quantity) and (not new_eta or eta == batch.eta):
            return  # the batch is so already: no new version, nothing to record
        self._changed(batch)
        if new_eta:
            batch.eta = eta
            self.events.append(
                events.BatchEtaChanged(sku=self.sku, ref=ref, eta=eta, version=self.version_number)
            )
        if qty is not None:
            self._resize(batch, qty, reason, note)

    def _changed(self, batch: Batch) -> None:
        self.version_number += 1
        batch.version = self.version_number

    def change_batch_quantity(self, ref: str, qty: int, reason: str = "correction") -> None:
        self.change_batch(ref, qty, reason=reason)

    def _resize(self, batch: Batch, qty: int, reason: str, note: str | None) -> None:
        ref = batch.reference
        if qty > batch.purchased_quantity:
            self.out_of_stock = False  # stock was added
        by, batch.purchased_quantity = qty - batch.purchased_quantity, qty
        self.events.append(
            events.BatchQuantityChanged(
                sku=self.sku,
                ref=ref,
                qty=qty,
                version=self.version_number,
                by=by,
                reason=reason,
                note=note,
            )
        )
        while batch.available_quantity < 0:
            # Holds give way first, the latest first: an order's line is a promise made.
            kept = [h.holdid for h in self.held.values() if h.batchref == ref]
            if kept:
                self.release(kept[-1], "lost")
                continue
            line = batch.deallocate_one()
            self.events.append(
                events.Deallocated(
                    orderid=line.orderid,
                    sku=line.sku,
                    qty=line.qty,
                    batchref=ref,
                    version=self.version_number,
                )
            )

    def _batch(self, ref: str) -> Batch | None:
        return next((b for b in self.batches if b.reference == ref), None)

    def _holding(self, orderid: str) -> tuple[Batch, OrderLine] | None:
        for batch in self.batches:
            for held in batch.allocations:
                if held.orderid == orderid:
                    return batch, held
        return None


@dataclass(frozen=True)
class HoldLine:
    sku: str
    qty: int
    batchref: str | None  # None: its batch lost the units (its quantity fell)


class Hold:
    """Stock kept for a checkout, every line or none, until ``expires_at``.

    Each line's units are kept by its sku's Product (``Product.hold``); the Hold
    is what the caller sees of them together: its state and its deadline.
    """

    def __init__(
        self,
        holdid: str,
        lines: Iterable[HoldLine],
        expires_at: datetime,
        state: str = "held",
        orderid: str | None = None,
        version: int = 0,
    ) -> None:
        self.holdid = holdid
        self.lines = sorted(lines, key=lambda line: line.sku)
        self.expires_at = expires_at
        self.state = state
        self.orderid = orderid
        self.version = version  # one more with each change: a consumer keeps the highest
        self.events: list[events.Event] = []

    @classmethod
    def placed(cls, holdid: str, lines: Iterable[HoldLine], expires_at: datetime) -> Hold:
        hold = cls(holdid, lines, expires_at)
        hold._said()
        return hold

    def asks(self) -> set[tuple[str, int]]:
        """Its lines, as a request names them: (sku, qty)."""
        return {(line.sku, line.qty) for line in self.lines}

    def due(self, now: datetime) -> bool:
        return self.state == "held" and self.expires_at <= now

    def extend(self, expires_at: datetime) -> None:
        self._held()
        self.expires_at = expires_at
        self._said()

    def end(self, state: str, orderid: str | None = None) -> None:
        """Confirmed (for ``orderid``), released or expired; its lines' units freed by then."""
        if state != "released":
            self._held()
        self.state, self.orderid = state, orderid
        self._said()

    def lost(self, sku: str) -> None:
        """The line of ``sku`` lost its units: its batch's quantity fell below what it kept."""
        self.lines = [replace(ln, batchref=None) if ln.sku == sku else ln for ln in self.lines]
        self._said()

    def _held(self) -> None:
        if self.state != "held":
            raise HoldEnded(f"Hold {self.holdid} is {self.state}")

    def _said(self) -> None:
        self.version += 1
        self.events.append(
            events.HoldChanged(
                holdid=self.holdid,
                state=self.state,
                expires_at=self.expires_at,
                orderid=self.orderid,
                lines=tuple(events.HeldUnits(ln.sku, ln.qty, ln.batchref) for ln in self.lines),
                hold_version=self.version,
            )
        )
