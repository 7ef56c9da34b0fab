"""Fakes: real, in-memory implementations of the service's ports."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from app.adapters.dead_letters import AbstractDeadLetters, Claim, DeadLetter
from app.adapters.holds import AbstractHolds
from app.adapters.notifications import AbstractNotifications
from app.adapters.outbox import AbstractOutbox, FailingEvent, OutboxStats, Pending, in_order
from app.adapters.projections import AbstractReadModel, LedgerRow
from app.adapters.publisher import AbstractPublisher
from app.adapters.repository import AbstractRepository
from app.adapters.unavailable import BrokerUnavailable
from app.clock import utcnow
from app.domain import events, model
from app.service_layer.unit_of_work import AbstractUnitOfWork, InlineHandlers


class FakeRepository(AbstractRepository):
    def __init__(
        self,
        products: dict[str, model.Product],
        positions: dict[str, tuple[int, int]] | None = None,
        ledger: list[LedgerRow] | None = None,
    ) -> None:
        super().__init__()
        self._products = products
        self.positions = {} if positions is None else positions
        self._ledger = [] if ledger is None else ledger

    async def last_of_line(self, orderid: str, sku: str) -> tuple[str, int] | None:
        rows = [r for r in self._ledger if (r.orderid, r.sku) == (orderid, sku)]
        return (rows[-1].kind, rows[-1].line_qty or 0) if rows else None

    def _add(self, product: model.Product) -> None:
        self._products[product.sku] = product

    async def _get(self, sku: str, orderid: str | None) -> model.Product | None:
        return self._products.get(sku)

    async def _prefetch(self, sku: str, orderids: Collection[str]) -> model.Product | None:
        return self._products.get(sku)  # every line is always there

    async def save(self) -> None:
        pass  # the products are the store's own objects

    async def _get_by_batchref(self, ref: str) -> model.Product | None:
        return next(
            (p for p in self._products.values() if any(b.reference == ref for b in p.batches)),
            None,
        )

    async def _load_held(self, product: model.Product, holdid: str) -> None:
        pass  # every hold's lines are always there

    async def _position(self, ref: str) -> tuple[int, int] | None:
        return self.positions.get(ref)

    async def _set_position(self, ref: str, position: tuple[int, int], new: bool) -> None:
        self.positions[ref] = position


class FakeReadModel(AbstractReadModel):
    def __init__(
        self, products: dict[str, model.Product], ledger: list[LedgerRow] | None = None
    ) -> None:
        self._products = products
        self.allocations: dict[tuple[str, str], str | None] = {}
        self._versions: dict[tuple[str, str], int] = {}
        self.batches: dict[str, dict[str, object]] = {}
        # Each accepted line: its state, batch, the product's version at its last change, qty.
        self.lines: dict[tuple[str, str], tuple[str, str | None, int, int]] = {}
        self.ledger = [] if ledger is None else ledger

    async def line_changed(
        self, orderid: str, sku: str, qty: int, state: str, batchref: str | None, version: int
    ) -> None:
        kept = self.lines.get((orderid, sku))
        if kept is None or kept[2] < version:
            self.lines[(orderid, sku)] = (state, batchref, version, qty)

    @property
    def refused(self) -> dict[tuple[str, str], int]:
        """The lines out of stock, and their quantities."""
        return {k: v[3] for k, v in self.lines.items() if v[0] == "out_of_stock"}

    @property
    def refused_at(self) -> dict[tuple[str, str], int]:
        """The lines out of stock, and the product's version when they were."""
        return {k: v[2] for k, v in self.lines.items() if v[0] == "out_of_stock"}

    async def batch_rescheduled(self, ref: str, eta: date | None, version: int) -> None:
        self.batches[ref]["eta"] = eta

    async def recorded(self, row: LedgerRow) -> None:
        self.ledger.append(row)

    async def allocation_changed(
        self, orderid: str, sku: str, batchref: str | None, version: int
    ) -> None:
        if self._versions.get((orderid, sku), -1) < version:
            self.allocations[(orderid, sku)] = batchref
            self._versions[(orderid, sku)] = version

    async def batch_added(
        self, ref: str, sku: str, eta: date | None, qty: int, version: int
    ) -> None:
        self.batches[ref] = {"sku": sku, "eta": eta, "purchased": qty, "allocated": 0}

    async def batch_resized(self, ref: str, qty: int, version: int) -> None:
        self.batches[ref]["purchased"] = qty

    async def batch_allocated(self, ref: str, qty: int, version: int) -> None:
        allocated = self.batches[ref]["allocated"]
        assert isinstance(allocated, int)
        self.batches[ref]["allocated"] = allocated + qty

    async def batch_held(self, ref: str, qty: int, version: int) -> None:
        held = self.batches[ref].get("held", 0)
        assert isinstance(held, int)
        self.batches[ref]["held"] = held + qty

    async def flush(self) -> None:
        pass  # it writes at once

    def allocations_of(self, orderid: str) -> list[dict[str, str]]:
        return [
            {"sku": sku, "batchref": batchref}
            for (o, sku), batchref in sorted(self.allocations.items())
            if o == orderid and batchref is not None
        ]


@dataclass
class OutboxRow:
    event: events.Event
    available_at: datetime
    attempts: int = 0
    last_error: str | None = None
    completed: bool = False


@dataclass
class FakeOutbox(AbstractOutbox):
    rows: dict[str, OutboxRow] = field(default_factory=dict)
    handled: set[tuple[str, str]] = field(default_factory=set)

    async def add(self, new: list[events.Event]) -> None:
        for e in new:
            self.rows[e.id] = OutboxRow(e, utcnow())

    async def claim(self, limit: int) -> list[Pending]:
        now = utcnow()
        due = [r for r in self.rows.values() if not r.completed and r.available_at <= now]
        return in_order(
            [
                (
                    Pending(
                        row.event,
                        row.attempts,
                        frozenset(h for i, h in self.handled if i == row.event.id),
                    ),
                    self._earlier(row.event),
                )
                for row in due[:limit]
            ]
        )

    def _earlier(self, event: events.Event) -> int:
        """How many undelivered events of its product came before it."""
        sku, version = getattr(event, "sku", None), getattr(event, "version", None)
        if version is None:
            return 0
        return sum(
            1
            for r in self.rows.values()
            if not r.completed
            and getattr(r.event, "sku", None) == sku
            and (getattr(r.event, "version", None) or version) < version
        )

    async def delivered(self, event_ids: list[str]) -> None:
        for event_id in event_ids:
            self.rows[event_id].completed = True

    async def retry_later(
        self, event_id: str, error: str, retry_at: datetime, finished: list[str]
    ) -> None:
        self.handled.update((event_id, name) for name in finished)
        row = self.rows[event_id]
        row.attempts += 1
        row.last_error = error
        row.available_at = retry_at

    async def stats(self, failing_after: int) -> OutboxStats:
        pending = [r for r in self.rows.values() if not r.completed]
        failing = sum(r.attempts >= failing_after for r in pending)
        return OutboxStats(len(pending), failing, None, None)

    async def failing(self, failing_after: int, limit: int) -> list[FailingEvent]:
        rows = [r for r in self.rows.values() if not r.completed and r.attempts >= failing_after]
        rows.sort(key=lambda r: -r.attempts)
        return [
            FailingEvent(r.event.id, type(r.event).__name__, r.attempts, r.last_error)
            for r in rows[:limit]
        ]

    async def prune(self, before: datetime, limit: int) -> int:
        return 0

    async def reclaim_space(self) -> None:
        pass

    def pending(self) -> list[events.Event]:
        return [r.event for r in self.rows.values() if not r.completed]


class FakeHolds(AbstractHolds):
    def __init__(self, holds: dict[str, model.Hold]) -> None:
        super().__init__()
        self._holds = holds

    def _add(self, hold: model.Hold) -> None:
        self._holds[hold.holdid] = hold

    async def _get(self, holdid: str, busy: str) -> model.Hold | None:
        return self._holds.get(holdid)

    async def due(self, now: datetime, limit: int) -> list[str]:
        due = sorted((h for h in self._holds.values() if h.due(now)), key=lambda h: h.expires_at)
        return [h.holdid for h in due[:limit]]

    async def save(self) -> None:
        pass  # the holds are the store's own objects


class FakeStore:
    """What the fake unit of work persists: shared by every unit of work of a test."""

    def __init__(self) -> None:
        self.products: dict[str, model.Product] = {}
        self.holds: dict[str, model.Hold] = {}
        # batch -> when the change applied to it last came
        self.positions: dict[str, tuple[int, int]] = {}
        self.ledger: list[LedgerRow] = []
        self.read_model = FakeReadModel(self.products, self.ledger)
        self.outbox = FakeOutbox()
        self.commits = 0
        self.history: list[events.Event] = []  # every event committed, in order


class FakeUnitOfWork(AbstractUnitOfWork):
    def __init__(
        self,
        store: FakeStore,
        inline: InlineHandlers | None = None,
        after_commit: Collection[type[events.Event]] = (),
    ) -> None:
        super().__init__(inline, after_commit)
        self.store = store
        self.products = FakeRepository(store.products, store.positions, store.ledger)
        self.holds = FakeHolds(store.holds)
        self.read_model = store.read_model
        self.outbox = store.outbox

    async def commit(self) -> None:
        await super().commit()
        self.store.history.extend(self.committed_events)

    async def _commit(self) -> None:
        self.store.commits += 1

    async def rollback(self) -> None:
        pass


class FakeNotifications(AbstractNotifications):
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send_out_of_stock(self, sku: str, orderid: str | None, event_id: str) -> None:
        self.sent.append(sku)


class FakePublisher(AbstractPublisher):
    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        self.published.append((channel, payload))


class FailingPublisher(AbstractPublisher):
    """Fails the next ``times`` publishes, as Redis would while it is down."""

    def __init__(self, times: int = 1) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.times = times

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        if self.times > 0:
            self.times -= 1
            raise ConnectionError("publisher down")
        self.published.append((channel, payload))


class FakeDeadLetters(AbstractDeadLetters):
    """The dead-letter list in memory; ``unreachable``, every write fails as a lost broker's."""

    def __init__(self) -> None:
        self.key = "fake dead letters"
        self.letters: list[DeadLetter] = []
        self.unreachable = False
        self._claimed: set[str] = set()

    async def add(self, letter: DeadLetter) -> None:
        if self.unreachable:
            raise BrokerUnavailable("dead-letter list unreachable")
        self.letters.append(letter)

    async def entries(self) -> list[DeadLetter]:
        return list(self.letters)

    async def take(self, letter_id: str) -> DeadLetter | None:
        for letter in self.letters:
            if letter.id == letter_id:
                self.letters.remove(letter)
                return letter
        return None

    async def claim(self, letter_id: str) -> Claim | None:
        for n, letter in enumerate(self.letters):
            if letter.id == letter_id and letter_id not in self._claimed:
                self._claimed.add(letter_id)
                return Claim(letter, n, letter_id)
        return None

    async def settle(self, claim: Claim) -> None:
        self.letters = [letter for letter in self.letters if letter.id != claim.lock]
        self._claimed.discard(claim.lock)

    async def clear(self) -> int:
        count, self.letters = len(self.letters), []
        return count
