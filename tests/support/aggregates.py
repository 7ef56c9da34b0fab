"""Products seen from outside: their state as a value, where lines sit, what always holds."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import date

from app.domain.model import Batch, OrderLine, Product

BatchState = tuple[str, date | None, int, int, frozenset[OrderLine]]
State = tuple[dict[str, int], dict[str, BatchState]]


def batch_state(batch: Batch) -> BatchState:
    return (
        batch.sku,
        batch.eta,
        batch.purchased_quantity,
        batch.allocated_quantity,
        frozenset(batch.allocations),
    )


def state(products: Iterable[Product]) -> State:
    """Product versions by sku, and every batch by reference; events left out."""
    products = list(products)
    versions = {p.sku: p.version_number for p in products}
    return versions, {b.reference: batch_state(b) for p in products for b in p.batches}


def placements(products: Iterable[Product]) -> dict[tuple[str, str], tuple[str, int]]:
    """(orderid, sku) -> (batch reference, qty) of every allocated line."""
    return {
        (line.orderid, line.sku): (batch.reference, line.qty)
        for product in products
        for batch in product.batches
        for line in batch.allocations
    }


def assert_consistent(products: Iterable[Product]) -> None:
    """No batch holds more than it has, and no order line sits in two batches."""
    products = list(products)
    refs = Counter(b.reference for p in products for b in p.batches)
    assert max(refs.values(), default=1) == 1, f"a batch reference used twice: {refs}"
    holders: dict[tuple[str, str], str] = {}
    for product in products:
        for batch in product.batches:
            assert batch.sku == product.sku, f"{batch} of {batch.sku} in {product.sku}"
            assert 0 <= batch.allocated_quantity <= batch.purchased_quantity, (
                f"{batch} has {batch.allocated_quantity} allocated"
                f" of {batch.purchased_quantity} purchased"
            )
            assert batch.allocated_quantity == sum(line.qty for line in batch.allocations)
            for line in batch.allocations:
                assert line.sku == batch.sku, f"{line} in {batch} of {batch.sku}"
                key = (line.orderid, line.sku)
                assert key not in holders, f"{key} in {holders[key]} and {batch.reference}"
                holders[key] = batch.reference
