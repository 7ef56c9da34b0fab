from datetime import date, timedelta

import pytest

from app.domain import events
from app.domain.model import Batch, DuplicateBatch, LineConflict, OrderLine, Product

today = date.today()
tomorrow = today + timedelta(days=1)
later = tomorrow + timedelta(days=10)


def available(product: Product) -> dict[str, int]:
    return {b.reference: b.available_quantity for b in product.batches}


def test_prefers_warehouse_batches_to_shipments() -> None:
    in_stock = Batch("in-stock-batch", "RETRO-CLOCK", 100, eta=None)
    shipment = Batch("shipment-batch", "RETRO-CLOCK", 100, eta=tomorrow)
    product = Product("RETRO-CLOCK", batches=[shipment, in_stock])

    product.allocate(OrderLine("oref", "RETRO-CLOCK", 10))

    assert available(product) == {"in-stock-batch": 90, "shipment-batch": 100}


def test_prefers_earlier_batches() -> None:
    earliest = Batch("speedy-batch", "MINIMALIST-SPOON", 100, eta=today)
    medium = Batch("normal-batch", "MINIMALIST-SPOON", 100, eta=tomorrow)
    latest = Batch("slow-batch", "MINIMALIST-SPOON", 100, eta=later)
    product = Product("MINIMALIST-SPOON", batches=[medium, latest, earliest])

    product.allocate(OrderLine("order1", "MINIMALIST-SPOON", 10))

    assert available(product) == {"speedy-batch": 90, "normal-batch": 100, "slow-batch": 100}


def test_falls_back_to_a_later_batch_when_the_preferred_one_is_too_small() -> None:
    in_stock = Batch("in-stock-batch", "LAMP", 5, eta=None)
    shipment = Batch("shipment-batch", "LAMP", 100, eta=tomorrow)
    product = Product("LAMP", batches=[in_stock, shipment])

    assert product.allocate(OrderLine("order1", "LAMP", 10)) == "shipment-batch"


def test_returns_allocated_batch_ref() -> None:
    in_stock = Batch("in-stock-batch-ref", "HIGHBROW-POSTER", 100, eta=None)
    shipment = Batch("shipment-batch-ref", "HIGHBROW-POSTER", 100, eta=tomorrow)
    product = Product("HIGHBROW-POSTER", batches=[in_stock, shipment])

    assert product.allocate(OrderLine("oref", "HIGHBROW-POSTER", 10)) == "in-stock-batch-ref"


def test_records_out_of_stock_event_if_cannot_allocate() -> None:
    product = Product("SMALL-FORK", batches=[Batch("batch1", "SMALL-FORK", 10, eta=today)])
    product.allocate(OrderLine("order1", "SMALL-FORK", 10))
    version = product.version_number

    allocation = product.allocate(OrderLine("order2", "SMALL-FORK", 1))

    assert allocation is None
    assert product.events[-1] == events.OutOfStock(sku="SMALL-FORK", orderid="order2")
    assert available(product) == {"batch1": 0}
    assert product.version_number == version


def test_increments_version_number_and_reports_it_in_allocated() -> None:
    product = Product("LAMP", batches=[Batch("b1", "LAMP", 100, eta=None)], version_number=7)

    product.allocate(OrderLine("order1", "LAMP", 10))

    assert product.version_number == 8
    assert product.events == [
        events.Allocated(orderid="order1", sku="LAMP", qty=10, batchref="b1", version=8)
    ]


def test_allocating_the_same_line_again_changes_nothing() -> None:
    batches = [Batch("b1", "LAMP", 10, eta=None), Batch("b2", "LAMP", 10, eta=tomorrow)]
    product = Product("LAMP", batches=batches)
    first = product.allocate(OrderLine("order1", "LAMP", 6))
    product.events.clear()
    version = product.version_number

    again = product.allocate(OrderLine("order1", "LAMP", 6))

    assert again == first == "b1"
    assert product.events == []
    assert product.version_number == version
    assert available(product) == {"b1": 4, "b2": 10}


def test_same_order_asking_a_different_quantity_is_a_line_conflict() -> None:
    product = Product("LAMP", batches=[Batch("b1", "LAMP", 100, eta=None)])
    product.allocate(OrderLine("order1", "LAMP", 6))
    product.events.clear()

    with pytest.raises(LineConflict, match="order1"):
        product.allocate(OrderLine("order1", "LAMP", 7))

    assert product.events == []
    assert available(product) == {"b1": 94}


def test_add_batch_records_batch_created_with_the_new_version() -> None:
    product = Product("LAMP", batches=[])

    product.add_batch(Batch("b1", "LAMP", 20, eta=tomorrow))

    assert [b.reference for b in product.batches] == ["b1"]
    assert product.version_number == 1
    assert product.events == [
        events.BatchCreated(sku="LAMP", ref="b1", qty=20, eta=tomorrow, version=1)
    ]


def test_adding_an_identical_batch_again_changes_nothing() -> None:
    product = Product("LAMP", batches=[])
    product.add_batch(Batch("b1", "LAMP", 20, eta=tomorrow))
    product.events.clear()

    product.add_batch(Batch("b1", "LAMP", 20, eta=tomorrow))

    assert len(product.batches) == 1
    assert product.events == []
    assert product.version_number == 1


@pytest.mark.parametrize(
    ("sku", "qty", "eta"),
    [("LAMP", 21, tomorrow), ("LAMP", 20, None), ("LAMP", 20, later), ("CHAIR", 20, tomorrow)],
)
def test_same_ref_with_different_details_is_a_duplicate_batch(
    sku: str, qty: int, eta: date | None
) -> None:
    product = Product("LAMP", batches=[])
    product.add_batch(Batch("b1", "LAMP", 20, eta=tomorrow))
    product.events.clear()

    with pytest.raises(DuplicateBatch, match="b1"):
        product.add_batch(Batch("b1", sku, qty, eta))

    assert [(b.sku, b.purchased_quantity, b.eta) for b in product.batches] == [
        ("LAMP", 20, tomorrow)
    ]
    assert product.events == []


def test_change_batch_quantity_records_the_change() -> None:
    product = Product("LAMP", batches=[Batch("b1", "LAMP", 20, eta=None)], version_number=3)

    product.change_batch_quantity("b1", 50)

    assert available(product) == {"b1": 50}
    assert product.events == [
        events.BatchQuantityChanged(sku="LAMP", ref="b1", qty=50, version=4, by=30)
    ]


def test_change_batch_quantity_deallocates_lines_until_the_batch_fits() -> None:
    batch = Batch("b1", "LAMP", 20, eta=None)
    product = Product("LAMP", batches=[batch])
    lines = [OrderLine("o1", "LAMP", 8), OrderLine("o2", "LAMP", 8)]
    for line in lines:
        product.allocate(line)
    product.events.clear()

    product.change_batch_quantity("b1", 10)

    version = product.version_number
    changed, *deallocated = product.events
    assert changed == events.BatchQuantityChanged(
        sku="LAMP", ref="b1", qty=10, version=version, by=-10
    )
    assert len(deallocated) == 1
    [event] = deallocated
    assert isinstance(event, events.Deallocated)
    assert (event.sku, event.qty, event.batchref, event.version) == ("LAMP", 8, "b1", version)
    assert event.orderid in {"o1", "o2"}
    assert {line.orderid for line in batch.allocations} == {"o1", "o2"} - {event.orderid}
    assert batch.available_quantity == 2


@pytest.mark.parametrize("new_qty", [0, 1, 5, 9, 10, 14, 15])
def test_change_batch_quantity_never_leaves_negative_availability(new_qty: int) -> None:
    batch = Batch("b1", "LAMP", 15, eta=None)
    product = Product("LAMP", batches=[batch])
    for orderid, qty in [("o1", 1), ("o2", 4), ("o3", 10)]:
        product.allocate(OrderLine(orderid, "LAMP", qty))
    product.events.clear()

    product.change_batch_quantity("b1", new_qty)

    deallocated = [e for e in product.events if isinstance(e, events.Deallocated)]
    assert batch.available_quantity >= 0
    assert batch.allocated_quantity == sum(line.qty for line in batch.allocations)
    assert batch.allocated_quantity + sum(e.qty for e in deallocated) == 15
    assert {e.orderid for e in deallocated}.isdisjoint(line.orderid for line in batch.allocations)
    if deallocated:  # it stopped as soon as the batch fitted
        assert batch.allocated_quantity + deallocated[-1].qty > new_qty


def test_change_batch_quantity_of_an_unknown_batch_raises() -> None:
    product = Product("LAMP", batches=[Batch("b1", "LAMP", 20, eta=None)])

    with pytest.raises(KeyError):
        product.change_batch_quantity("nope", 5)

    assert product.events == []
    assert product.version_number == 0
