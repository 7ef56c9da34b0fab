"""Holds against a plain sequential model, on PostgreSQL, on a fake clock.

Any interleaving of holds placed (of one sku or two), extended, confirmed and
released, lines allocated, batch quantities changed and time passing (each
tick followed by the expiry the deadline loop does) gives the model's
answers: each batch's purchased, allocated and held units, each hold's state
and lines, each order's allocated lines; and ``allocation reconcile`` finds
no drift.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import partial
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import select

from app import clock
from app.adapters import reconcile, tables
from app.config import Settings
from app.container import Container
from app.domain import commands
from app.domain.model import HoldEnded, LineConflict
from app.service_layer.holds import HoldMismatch, HoldShort, UnknownHold
from tests.support.fakes import FakeNotifications, FakePublisher
from tests.support.properties import property_settings
from tests.support.refs import random_ref

pytestmark = pytest.mark.postgres

SKUS, HOLDS, ORDERS = 2, 4, 4
# Per sku: stock in the warehouse, then a shipment.
BATCHES = ((None, 6), (date(2031, 1, 1), 4))
REFUSED = (HoldEnded, HoldMismatch, HoldShort, UnknownHold, LineConflict)


@pytest.fixture
def settings(module_database: str) -> Settings:
    return Settings(database_url=module_database, read_database_url=None, relay_enabled=False)


@pytest.fixture
def container_overrides() -> dict[str, object]:
    return {"notifications": FakeNotifications(), "publisher": FakePublisher()}


@pytest.fixture
def fake_clock() -> Iterator[clock.FakeClock]:
    fake = clock.FakeClock(datetime(2031, 6, 1, 12, 0))
    previous = clock.use(fake)
    yield fake
    clock.use(previous)


@dataclass
class Batch:
    ref: str
    eta: date | None
    purchased: int
    allocated: dict[str, int] = field(default_factory=dict)  # orderid -> qty
    held: dict[str, int] = field(default_factory=dict)  # holdid -> qty, in the order placed

    @property
    def available(self) -> int:
        return self.purchased - sum(self.allocated.values()) - sum(self.held.values())


@dataclass
class Hold:
    lines: dict[str, tuple[int, str | None]]  # sku -> (qty, batchref)
    expires_at: datetime
    state: str = "held"
    orderid: str | None = None


class Model:
    """What the service should answer, one command after another."""

    def __init__(self, skus: list[str]) -> None:
        self.batches = {
            sku: [Batch(f"{sku}-b{n}", eta, qty) for n, (eta, qty) in enumerate(BATCHES)]
            for sku in skus
        }
        self.holds: dict[str, Hold] = {}

    def _ordered(self, sku: str) -> list[Batch]:
        return sorted(self.batches[sku], key=lambda b: (b.eta is not None, b.eta or date.min))

    def _batch(self, ref: str) -> Batch:
        return next(b for bs in self.batches.values() for b in bs if b.ref == ref)

    def _line(self, orderid: str, sku: str) -> Batch | None:
        return next((b for b in self.batches[sku] if orderid in b.allocated), None)

    def allocate(self, orderid: str, sku: str, qty: int) -> None:
        holder = self._line(orderid, sku)
        if holder is not None:
            if holder.allocated[orderid] != qty:
                raise LineConflict
            return
        batch = next((b for b in self._ordered(sku) if b.available >= qty), None)
        if batch is not None:
            batch.allocated[orderid] = qty

    def hold(self, holdid: str, lines: dict[str, int], now: datetime, ttl: int) -> None:
        if holdid in self.holds:
            if {s: q for s, (q, _) in self.holds[holdid].lines.items()} != lines:
                raise HoldMismatch
            return
        if any(all(b.available < q for b in self.batches[s]) for s, q in lines.items()):
            raise HoldShort("", [])
        held: dict[str, tuple[int, str | None]] = {}
        for sku, qty in sorted(lines.items()):
            batch = next(b for b in self._ordered(sku) if b.available >= qty)
            batch.held[holdid] = qty
            held[sku] = (qty, batch.ref)
        self.holds[holdid] = Hold(held, now + timedelta(seconds=ttl))

    def _held(self, holdid: str, orderid: str | None = None) -> Hold:
        if holdid not in self.holds:
            raise UnknownHold
        hold = self.holds[holdid]
        if hold.state == "confirmed" and orderid is not None and hold.orderid == orderid:
            return hold
        if hold.state != "held":
            raise HoldEnded
        return hold

    def extend(self, holdid: str, now: datetime, ttl: int) -> None:
        self._held(holdid).expires_at = now + timedelta(seconds=ttl)

    def confirm(self, holdid: str, orderid: str) -> None:
        hold = self._held(holdid, orderid)
        if hold.state == "confirmed":
            return
        if any(self._line(orderid, sku) is not None for sku in hold.lines):
            raise LineConflict  # the order has a line of the sku: nothing changes
        for sku, (qty, ref) in sorted(hold.lines.items()):
            if ref is None:
                self.allocate(orderid, sku, qty)
            else:
                self._batch(ref).held.pop(holdid)
                self._batch(ref).allocated[orderid] = qty
        hold.state, hold.orderid = "confirmed", orderid

    def end(self, holdid: str, state: str) -> None:
        hold = self.holds[holdid]
        for _, ref in hold.lines.values():
            if ref is not None:
                self._batch(ref).held.pop(holdid)
        hold.state = state

    def release(self, holdid: str) -> None:
        if holdid not in self.holds:
            raise UnknownHold
        if self.holds[holdid].state == "held":
            self.end(holdid, "released")

    def expire(self, now: datetime) -> None:
        for holdid, hold in self.holds.items():
            if hold.state == "held" and hold.expires_at <= now:
                self.end(holdid, "expired")

    def resize(self, ref: str, qty: int) -> None:
        batch = self._batch(ref)
        sku = ref.rsplit("-b", 1)[0]
        batch.purchased = qty
        lost: list[tuple[str, int]] = []
        while batch.available < 0:
            if batch.held:
                holdid = list(batch.held)[-1]
                batch.held.pop(holdid)
                qty_held, _ = self.holds[holdid].lines[sku]
                self.holds[holdid].lines[sku] = (qty_held, None)
                continue
            orderid = max(batch.allocated)
            lost.append((orderid, batch.allocated.pop(orderid)))
        for orderid, line_qty in lost:
            self.allocate(orderid, sku, line_qty)

    def state(self) -> dict[str, Any]:
        return {
            "batches": {
                b.ref: (b.purchased, sum(b.allocated.values()), sum(b.held.values()))
                for bs in self.batches.values()
                for b in bs
            },
            "holds": {
                h: (hold.state, hold.orderid, dict(hold.lines)) for h, hold in self.holds.items()
            },
            "lines": {
                (o, b.ref.rsplit("-b", 1)[0]): (b.ref, q)
                for bs in self.batches.values()
                for b in bs
                for o, q in b.allocated.items()
            },
        }


holds, orders = st.integers(0, HOLDS - 1), st.integers(0, ORDERS - 1)
ttls = st.sampled_from([1, 5, 20])
steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("hold"),
            holds,
            st.dictionaries(st.integers(0, SKUS - 1), st.integers(1, 7), min_size=1),
            ttls,
        ),
        st.tuples(st.just("extend"), holds, ttls),
        st.tuples(st.just("confirm"), holds, orders),
        st.tuples(st.just("release"), holds),
        st.tuples(st.just("allocate"), orders, st.integers(0, SKUS - 1), st.integers(1, 6)),
        st.tuples(
            st.just("resize"), st.integers(0, SKUS - 1), st.integers(0, 1), st.integers(0, 12)
        ),
        st.tuples(st.just("tick"), st.sampled_from([1, 3, 10, 30])),
    ),
    min_size=1,
    max_size=30,
)


async def stored(container: Container, prefix: str) -> dict[str, Any]:
    """What the database holds of this example's skus and holds."""
    b, h, line, a = tables.batches.c, tables.holds.c, tables.order_lines.c, tables.allocations.c
    async with container.engine().connect() as conn:
        batches = (
            await conn.execute(
                select(
                    b.reference, b.purchased_quantity, b.allocated_quantity, b.held_quantity
                ).where(b.sku.startswith(prefix))
            )
        ).all()
        holds = (
            await conn.execute(
                select(h.holdid, h.state, h.orderid, h.lines).where(h.holdid.startswith(prefix))
            )
        ).all()
        lines = (
            await conn.execute(
                select(line.orderid, line.sku, b.reference, line.qty)
                .join(tables.allocations, a.orderline_id == line.id)
                .join(tables.batches, b.id == a.batch_id)
                .where(line.sku.startswith(prefix))
            )
        ).all()
    return {
        "batches": {ref: (p, al, hl) for ref, p, al, hl in batches},
        "holds": {
            holdid: (state, orderid, {ln["sku"]: (ln["qty"], ln["batchref"]) for ln in held})
            for holdid, state, orderid, held in holds
        },
        "lines": {(o, s): (ref, q) for o, s, ref, q in lines},
    }


@hypothesis_settings(
    property_settings,
    max_examples=min(property_settings.max_examples, 30),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=steps)
async def test_holds_give_the_answers_of_a_sequential_model(
    container: Container, fake_clock: clock.FakeClock, steps: list[tuple[Any, ...]]
) -> None:
    prefix = random_ref("p")
    skus = [f"{prefix}-s{n}" for n in range(SKUS)]
    holdids = [f"{prefix}-h{n}" for n in range(HOLDS)]
    orderids = [f"{prefix}-o{n}" for n in range(ORDERS)]
    model, bus = Model(skus), container.bus()
    for sku, batches in model.batches.items():
        for batch in batches:
            await bus.handle(commands.CreateBatch(batch.ref, sku, batch.purchased, batch.eta))

    for step in steps:
        now = fake_clock.now()
        command: commands.Command | None = None
        expected: Callable[[], None] = lambda: None  # noqa: E731
        match step:
            case ("hold", n, lines, ttl):
                asked = {skus[s]: q for s, q in lines.items()}
                command = commands.PlaceHold(holdids[n], tuple(asked.items()), ttl)
                expected = partial(model.hold, holdids[n], asked, now, ttl)
            case ("extend", n, ttl):
                command = commands.ExtendHold(holdids[n], ttl)
                expected = partial(model.extend, holdids[n], now, ttl)
            case ("confirm", n, o):
                command = commands.ConfirmHold(holdids[n], orderids[o])
                expected = partial(model.confirm, holdids[n], orderids[o])
            case ("release", n):
                command = commands.ReleaseHold(holdids[n])
                expected = partial(model.release, holdids[n])
            case ("allocate", o, s, qty):
                command = commands.Allocate(orderids[o], skus[s], qty)
                expected = partial(model.allocate, orderids[o], skus[s], qty)
            case ("resize", s, n, qty):
                ref = model.batches[skus[s]][n].ref
                command = commands.ChangeBatch(ref, qty, reason="count")
                expected = partial(model.resize, ref, qty)
            case ("tick", seconds):
                fake_clock.advance(seconds)
                async with container.uow() as uow:
                    due = await uow.holds.due(fake_clock.now(), 1000)
                for holdid in due:
                    await bus.handle(commands.ExpireHold(holdid))
                model.expire(fake_clock.now())
        if command is not None:
            refused = None
            try:
                expected()
            except REFUSED as e:
                refused = type(e)
            got = None
            try:
                await bus.handle(command)
            except REFUSED as e:
                got = type(e)
            assert got is refused, step
        assert await stored(container, prefix) == model.state(), step

    async with container.engine().connect() as conn:
        assert [d async for d in reconcile.drifts(conn) if prefix in d] == []
    for purchased, allocated, held in model.state()["batches"].values():
        assert allocated + held <= purchased or allocated <= purchased


def test_the_model_refuses_as_the_service_does() -> None:
    """A sanity check of the model itself: a short hold changes nothing."""
    model = Model(["a", "b"])
    model.hold("h1", {"a": 6}, datetime(2031, 1, 1), 5)
    with contextlib.suppress(HoldShort):
        model.hold("h2", {"a": 4, "b": 11}, datetime(2031, 1, 1), 5)
    assert model.state()["batches"] == {
        "a-b0": (6, 0, 6),
        "a-b1": (4, 0, 0),
        "b-b0": (6, 0, 0),
        "b-b1": (4, 0, 0),
    }
