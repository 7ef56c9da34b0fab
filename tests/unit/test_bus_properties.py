"""Properties of the service over any sequence of commands, through the bus on fakes.

The bus is wired as app.container wires it. After each command, and all the
events that follow from it, the write model is consistent, every line a
quantity change deallocated is allocated again when some batch has room for
it, and the read model is what a rebuild from the write model would make.
A refused command raises the domain's own exception and changes nothing
(the fake unit of work does not roll back, so that is the domain's doing).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import date

import pytest
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from app.domain import commands, events, model
from app.service_layer import handlers
from tests.support import strategies
from tests.support.aggregates import assert_consistent, placements, state
from tests.support.buses import Service as WiredService
from tests.support.buses import bootstrap_test_bus
from tests.support.fakes import FakeNotifications, FakeReadModel, FakeStore
from tests.support.properties import property_settings

Line = tuple[str, str]  # (orderid, sku)
View = tuple[dict[Line, str], dict[str, dict[str, object]]]
VERSIONED = (events.BatchCreated, events.BatchQuantityChanged, events.Allocated, events.Deallocated)


def rebuilt(products: Iterable[model.Product]) -> View:
    """The read model as rebuilding it from the write model would make it."""
    products = list(products)
    allocations = {line: ref for line, (ref, _) in placements(products).items()}
    batches: dict[str, dict[str, object]] = {
        b.reference: {
            "sku": b.sku,
            "eta": b.eta,
            "purchased": b.purchased_quantity,
            "allocated": b.allocated_quantity,
        }
        for p in products
        for b in p.batches
    }
    return allocations, batches


def projected(read_model: FakeReadModel) -> View:
    """The read model the event handlers keep, less the rows of deallocated lines."""
    allocations = {line: ref for line, ref in read_model.allocations.items() if ref is not None}
    return allocations, read_model.batches


def replayed(history: Iterable[events.Event]) -> View:
    """A read model made from nothing but the events, in the order they were committed."""
    allocations: dict[Line, str] = {}
    details: dict[str, tuple[str, date | None]] = {}
    purchased: dict[str, int] = {}
    allocated: dict[str, int] = {}
    for e in history:
        match e:
            case events.BatchCreated(sku=sku, ref=ref, qty=qty, eta=eta):
                details[ref], purchased[ref], allocated[ref] = (sku, eta), qty, 0
            case events.BatchQuantityChanged(ref=ref, qty=qty):
                purchased[ref] = qty
            case events.Allocated(orderid=orderid, sku=sku, qty=qty, batchref=ref):
                allocations[orderid, sku] = ref
                allocated[ref] += qty
            case events.Deallocated(orderid=orderid, sku=sku, qty=qty, batchref=ref):
                assert allocations.pop((orderid, sku)) == ref
                allocated[ref] -= qty
    batches: dict[str, dict[str, object]] = {
        ref: {"sku": sku, "eta": eta, "purchased": purchased[ref], "allocated": allocated[ref]}
        for ref, (sku, eta) in details.items()
    }
    return allocations, batches


def assert_versions_rise(
    history: Iterable[events.Event], products: dict[str, model.Product]
) -> None:
    """Each product's events carry versions that never go back, the last its version now.

    The projections keep a row of a newer version over an older one; a change
    that did not raise the version would be lost.
    """
    last: dict[str, int] = {}
    for e in history:
        if isinstance(e, VERSIONED):
            assert e.version >= last.get(e.sku, 0), f"{e} after version {last[e.sku]}"
            last[e.sku] = e.version
    assert last == {sku: p.version_number for sku, p in products.items()}


def refusal(products: dict[str, model.Product], cmd: commands.Command) -> type[Exception] | None:
    """The error the service must answer ``cmd`` with, if any."""
    batches = {b.reference: b for p in products.values() for b in p.batches}
    match cmd:
        case commands.CreateBatch(ref=ref) if ref in batches:
            b = batches[ref]
            if (b.sku, b.purchased_quantity, b.eta) != (cmd.sku, cmd.qty, cmd.eta):
                return model.DuplicateBatch
        case commands.Allocate(orderid=orderid, sku=sku, qty=qty):
            if sku not in products:
                return handlers.InvalidSku
            held = placements([products[sku]]).get((orderid, sku))
            if held is not None and held[1] != qty:
                return model.LineConflict
        case commands.ChangeBatchQuantity(ref=ref, qty=qty):
            if ref not in batches:
                return handlers.UnknownBatch
            if qty < 0:
                return ValueError
    return None


def assert_lines_kept_or_reallocated(
    cmd: commands.Command,
    before: dict[Line, tuple[str, int]],
    products: dict[str, model.Product],
    new: list[events.Event],
) -> None:
    """Lines stay put unless deallocated, and a deallocated line finds a batch if one has room."""
    after = placements(products.values())
    taken = [e for e in new if isinstance(e, events.Deallocated)]
    deallocated = {(e.orderid, e.sku): e for e in taken}
    assert len(deallocated) == len(taken), f"a line deallocated twice: {taken}"
    if taken:
        assert isinstance(cmd, commands.ChangeBatchQuantity)
    for line, e in deallocated.items():
        assert before.get(line) == (e.batchref, e.qty), f"{e} for a line not there"
        if line in after:
            assert after[line][1] == e.qty
            event("a deallocated line allocated again")
            continue
        room = max(b.available_quantity for b in products[e.sku].batches)
        assert room < e.qty, f"{line} left unallocated with room for {room} of {e.sku}"
        event("a deallocated line with nowhere to go")
    for line, place in before.items():
        if line not in deallocated:
            assert after.get(line) == place, f"{line} moved from {place} to {after.get(line)}"
    arrived = set(after) - set(before) - set(deallocated)
    if isinstance(cmd, commands.Allocate):
        arrived -= {(cmd.orderid, cmd.sku)}
    assert not arrived, f"lines allocated that nothing asked for: {arrived}"


async def handle_and_check(bus: WiredService, store: FakeStore, cmd: commands.Command) -> None:
    """Handle ``cmd`` and check everything that must hold afterwards."""
    before = state(store.products.values())
    lines = placements(store.products.values())
    seen = len(store.history)
    error = refusal(store.products, cmd)
    event(f"{type(cmd).__name__}: {error.__name__ if error else 'accepted'}")
    if error is None:
        await bus.handle(cmd)
    else:
        with pytest.raises(error):
            await bus.handle(cmd)
        assert state(store.products.values()) == before
        assert len(store.history) == seen

    history = store.history
    assert store.outbox.pending() == [], "an event some handler failed on"
    assert_consistent(store.products.values())
    assert_lines_kept_or_reallocated(cmd, lines, store.products, history[seen:])
    expected = rebuilt(store.products.values())
    assert projected(store.read_model) == expected
    assert replayed(history) == expected
    assert_versions_rise(history, store.products)


@property_settings
class Service(RuleBasedStateMachine):
    """One service on fakes; each rule hands it a command and checks the outcome."""

    def __init__(self) -> None:
        super().__init__()
        # A loop of its own: the test itself is synchronous, as Hypothesis's machines are.
        self.runner = asyncio.Runner(loop_factory=asyncio.new_event_loop)
        self.store = FakeStore()
        self.bus = bootstrap_test_bus(self.store, FakeNotifications())

    def teardown(self) -> None:
        self.runner.close()

    def handle(self, cmd: commands.Command) -> None:
        self.runner.run(handle_and_check(self.bus, self.store, cmd))

    @initialize(cmds=st.lists(strategies.create_batch, min_size=1, max_size=5))
    def stock(self, cmds: list[commands.CreateBatch]) -> None:
        for cmd in cmds:
            self.handle(cmd)

    @rule(cmd=strategies.create_batch)
    def create_batch(self, cmd: commands.CreateBatch) -> None:
        self.handle(cmd)

    @rule(cmd=strategies.allocate)
    def allocate(self, cmd: commands.Allocate) -> None:
        self.handle(cmd)

    @rule(cmd=strategies.change_batch_quantity)
    def change_batch_quantity(self, cmd: commands.ChangeBatchQuantity) -> None:
        self.handle(cmd)

    @rule(data=st.data())
    def lower_a_batch(self, data: st.DataObject) -> None:
        self.handle(strategies.lowering(data, self.store.products.values()))


TestService = Service.TestCase
