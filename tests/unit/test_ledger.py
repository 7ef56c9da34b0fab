"""Cancelling a line, changing a batch with its version, and the ledger each change leaves.

Through the real bus and handlers, on the fakes: what the read models and the
ledger say after each command.
"""

from datetime import date

import pytest

from app.domain import commands
from app.domain.model import Batch, OrderLine, Product, VersionMismatch
from app.service_layer import handlers
from tests.support.buses import Service, bootstrap_test_bus
from tests.support.fakes import FakeNotifications, FakePublisher, FakeStore
from tests.support.refs import random_ref


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def bus(store: FakeStore, notifications: FakeNotifications, publisher: FakePublisher) -> Service:
    return bootstrap_test_bus(store, notifications, publisher=publisher)


def ledger(store: FakeStore, **match: object) -> list[tuple[object, ...]]:
    """(kind, batchref, orderid, qty) of the ledger's rows that match."""
    return [
        (r.kind, r.batchref, r.orderid, r.qty)
        for r in store.ledger
        if all(getattr(r, k) == v for k, v in match.items())
    ]


def line(store: FakeStore, orderid: str, sku: str) -> tuple[str, str | None]:
    state, batchref, _, _ = store.read_model.lines[(orderid, sku)]
    return state, batchref


async def test_cancelling_a_line_gives_its_units_back_and_reads_cancelled(
    bus: Service, store: FakeStore
) -> None:
    sku, ref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    await bus.handle(commands.CreateBatch(ref, sku, 10, None))
    await bus.handle(commands.Allocate(orderid, sku, 3))

    await bus.handle(commands.Deallocate(orderid, sku))

    [batch] = store.products[sku].batches
    assert batch.available_quantity == 10
    assert store.read_model.batches[ref]["allocated"] == 0
    assert line(store, orderid, sku) == ("cancelled", None)
    assert store.read_model.allocations_of(orderid) == []
    assert ledger(store, sku=sku) == [
        ("added", ref, None, 10),
        ("allocated", ref, orderid, -3),
        ("cancelled", ref, orderid, 3),
    ]


async def test_cancelling_again_changes_nothing(bus: Service, store: FakeStore) -> None:
    sku, ref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    await bus.handle(commands.CreateBatch(ref, sku, 10, None))
    await bus.handle(commands.Allocate(orderid, sku, 3))
    await bus.handle(commands.Deallocate(orderid, sku))
    version = store.products[sku].version_number

    await bus.handle(commands.Deallocate(orderid, sku))

    assert store.products[sku].version_number == version
    assert len(ledger(store, orderid=orderid)) == 2


async def test_cancelling_a_line_out_of_stock_frees_nothing(bus: Service, store: FakeStore) -> None:
    sku, ref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    await bus.handle(commands.CreateBatch(ref, sku, 1, None))
    await bus.handle(commands.Allocate(orderid, sku, 5))
    assert line(store, orderid, sku) == ("out_of_stock", None)

    await bus.handle(commands.Deallocate(orderid, sku))

    assert line(store, orderid, sku) == ("cancelled", None)
    assert ledger(store, orderid=orderid) == [
        ("refused", None, orderid, 0),
        ("cancelled", None, orderid, 0),
    ]
    assert store.products[sku].batches[0].available_quantity == 1


@pytest.mark.parametrize("known_sku", [True, False])
async def test_a_line_never_accepted_cannot_be_cancelled(
    bus: Service, store: FakeStore, known_sku: bool
) -> None:
    sku = random_ref("sku")
    if known_sku:
        await bus.handle(commands.CreateBatch(random_ref("batch"), sku, 1, None))

    with pytest.raises(handlers.UnknownLine, match="has no line of"):
        await bus.handle(commands.Deallocate(random_ref("order"), sku))


async def test_a_cancelled_line_sent_again_is_allocated_anew(
    bus: Service, store: FakeStore
) -> None:
    sku, ref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    await bus.handle(commands.CreateBatch(ref, sku, 10, None))
    await bus.handle(commands.Allocate(orderid, sku, 3))
    await bus.handle(commands.Deallocate(orderid, sku))

    await bus.handle(commands.Allocate(orderid, sku, 4))

    assert line(store, orderid, sku) == ("allocated", ref)
    assert store.products[sku].batches[0].available_quantity == 6


async def test_a_new_eta_moves_the_batch_in_the_order_of_later_allocations(
    bus: Service, store: FakeStore
) -> None:
    sku, soon, late = random_ref("sku"), random_ref("soon"), random_ref("late")
    await bus.handle(commands.CreateBatch(soon, sku, 10, date(2031, 1, 1)))
    await bus.handle(commands.CreateBatch(late, sku, 10, date(2031, 6, 1)))
    first, second = random_ref("order"), random_ref("order")
    await bus.handle(commands.Allocate(first, sku, 1))

    await bus.handle(commands.ChangeBatch(late, eta=None, new_eta=True))
    await bus.handle(commands.Allocate(second, sku, 1))

    assert line(store, first, sku) == ("allocated", soon)  # where it was
    assert line(store, second, sku) == ("allocated", late)  # in the warehouse now
    assert store.read_model.batches[late]["eta"] is None


async def test_a_change_has_its_reason_and_note_in_the_ledger(
    bus: Service, store: FakeStore
) -> None:
    sku, ref = random_ref("sku"), random_ref("batch")
    await bus.handle(commands.CreateBatch(ref, sku, 10, None))

    await bus.handle(commands.ChangeBatch(ref, 7, reason="damaged", note="forklift"))
    await bus.handle(commands.ChangeBatchQuantity(ref, 9))

    changes = [(r.qty, r.reason, r.note) for r in store.ledger if r.kind == "changed"]
    assert changes == [(-3, "damaged", "forklift"), (2, "change_batch_quantity", None)]


async def test_a_change_at_another_version_changes_nothing(bus: Service, store: FakeStore) -> None:
    sku, ref = random_ref("sku"), random_ref("batch")
    await bus.handle(commands.CreateBatch(ref, sku, 10, None))
    [batch] = store.products[sku].batches
    seen = batch.version
    await bus.handle(commands.Allocate(random_ref("order"), sku, 1))  # the batch moves on

    with pytest.raises(VersionMismatch):
        await bus.handle(commands.ChangeBatch(ref, 5, expected=frozenset({seen})))
    assert batch.purchased_quantity == 10

    await bus.handle(commands.ChangeBatch(ref, 5, expected=frozenset({batch.version})))
    assert batch.purchased_quantity == 5


def test_a_batchs_version_moves_with_it_and_not_with_its_neighbours() -> None:
    near, far = Batch("near", "LAMP", 5, None), Batch("far", "LAMP", 5, date(2031, 1, 1))
    product = Product("LAMP", [near, far])
    far_version = far.version

    product.allocate(OrderLine("o1", "LAMP", 1))  # goes to the warehouse stock
    assert (near.version, far.version) == (product.version_number, far_version)
    product.change_batch("far", eta=date(2032, 1, 1), new_eta=True)
    assert far.version == product.version_number > near.version
    product.cancel("o1")
    assert near.version == product.version_number


async def test_a_product_ledger_adds_up_to_what_it_has_available(
    bus: Service, store: FakeStore
) -> None:
    sku, a, b = random_ref("sku"), random_ref("batch"), random_ref("batch")
    await bus.handle(commands.CreateBatch(a, sku, 10, None))
    await bus.handle(commands.CreateBatch(b, sku, 5, date(2031, 1, 1)))
    orders = [random_ref("order") for _ in range(4)]
    for orderid in orders:
        await bus.handle(commands.Allocate(orderid, sku, 4))
    await bus.handle(commands.ChangeBatchQuantity(a, 3))  # two lines lose their batch
    await bus.handle(commands.Deallocate(orders[0], sku))

    available = sum(batch.available_quantity for batch in store.products[sku].batches)
    assert sum(r.qty for r in store.ledger if r.sku == sku) == available
    kinds = {r.kind for r in store.ledger if r.sku == sku}
    assert {"added", "allocated", "changed", "deallocated", "cancelled"} <= kinds
