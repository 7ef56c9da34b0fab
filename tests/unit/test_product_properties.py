"""Properties of the Product aggregate over any sequence of changes to a few products.

The machine calls the domain's methods as the handlers do: a batch reference
already in use goes to the product that owns it, anything else to the
product of its sku. Every product holds all of its lines here, as it does in
memory; after every step no batch holds more than it has and no order line
sits in two batches. A refused change raises the domain's own exception and
changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from functools import partial

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from app.domain import commands, events
from app.domain.model import Batch, DuplicateBatch, LineConflict, OrderLine, Product
from tests.support import strategies
from tests.support.aggregates import assert_consistent, batch_state, state
from tests.support.properties import property_settings


def preference(batch: Batch) -> tuple[bool, date]:
    """Allocation prefers stock in the warehouse, then the earliest shipment."""
    return batch.eta is not None, batch.eta or date.min


def holding(product: Product, orderid: str) -> tuple[Batch, OrderLine] | None:
    return next(
        ((b, line) for b in product.batches for line in b.allocations if line.orderid == orderid),
        None,
    )


@property_settings
class Products(RuleBasedStateMachine):
    """A few products; each rule asks one for a change and checks what it did."""

    def __init__(self) -> None:
        super().__init__()
        self.products: dict[str, Product] = {}

    def owner(self, ref: str) -> Product | None:
        return next(
            (p for p in self.products.values() if any(b.reference == ref for b in p.batches)),
            None,
        )

    def raised(self) -> list[events.Event]:
        """The events raised since last asked, cleared as a commit clears them."""
        new = [e for p in self.products.values() for e in p.events]
        for p in self.products.values():
            p.events.clear()
        return new

    def assert_refused(self, change: Callable[[], object], error: type[Exception]) -> None:
        before = state(self.products.values())
        with pytest.raises(error):
            change()
        assert state(self.products.values()) == before
        assert self.raised() == []

    @initialize(cmds=st.lists(strategies.create_batch, min_size=1, max_size=5))
    def stock(self, cmds: list[commands.CreateBatch]) -> None:
        for cmd in cmds:
            self.add_batch(cmd)

    @rule(cmd=strategies.create_batch)
    def add_batch(self, cmd: commands.CreateBatch) -> None:
        batch = Batch(cmd.ref, cmd.sku, cmd.qty, cmd.eta)
        owner = self.owner(cmd.ref)
        if owner is None:
            product = self.products.setdefault(cmd.sku, Product(cmd.sku, batches=[]))
            version = product.version_number
            product.add_batch(batch)
            assert product.batches[-1] is batch
            assert not product.out_of_stock  # stock was added: the stock-out is over
            assert self.raised() == [
                events.BatchCreated(cmd.sku, cmd.ref, cmd.qty, cmd.eta, version + 1)
            ]
            return
        [existing] = [b for b in owner.batches if b.reference == cmd.ref]
        if (existing.sku, existing.purchased_quantity, existing.eta) != (cmd.sku, cmd.qty, cmd.eta):
            self.assert_refused(lambda: owner.add_batch(batch), DuplicateBatch)
            return
        before = state(self.products.values())
        owner.add_batch(batch)  # the same batch again
        assert state(self.products.values()) == before
        assert self.raised() == []

    @rule(cmd=strategies.allocate)
    def allocate(self, cmd: commands.Allocate) -> None:
        product = self.products.get(cmd.sku)
        if product is None:
            return  # the handler refuses an unknown sku before the domain sees it
        line = OrderLine(cmd.orderid, cmd.sku, cmd.qty)
        held = holding(product, cmd.orderid)
        if held is not None and held[1] != line:
            self.assert_refused(lambda: product.allocate(line), LineConflict)
            return
        versions, batches = state(self.products.values())
        fits = [b for b in product.batches if b.available_quantity >= line.qty]
        was_out_of_stock = product.out_of_stock

        ref = product.allocate(line)

        if held is not None:  # the same line again
            assert ref == held[0].reference
            assert state(self.products.values()) == (versions, batches)
            assert self.raised() == []
        elif not fits:
            assert ref is None
            assert state(self.products.values()) == (versions, batches)
            refused = events.LineRefused(cmd.orderid, cmd.sku, cmd.qty, product.version_number)
            began = [] if was_out_of_stock else [events.OutOfStock(cmd.sku, cmd.orderid)]
            assert self.raised() == [refused, *began]  # one notice per stock-out
            assert product.out_of_stock
        else:
            [batch] = [b for b in fits if b.reference == ref]
            assert preference(batch) == min(preference(b) for b in fits)
            sku, eta, purchased, allocated, lines = batches[batch.reference]
            assert state(self.products.values()) == (
                versions | {cmd.sku: versions[cmd.sku] + 1},
                batches
                | {batch.reference: (sku, eta, purchased, allocated + line.qty, lines | {line})},
            )
            assert self.raised() == [
                events.Allocated(
                    cmd.orderid, cmd.sku, cmd.qty, batch.reference, versions[cmd.sku] + 1
                )
            ]

    @rule(cmd=strategies.change_batch_quantity, sku=strategies.skus)
    def change_batch_quantity(self, cmd: commands.ChangeBatchQuantity, sku: str) -> None:
        owner = self.owner(cmd.ref)
        if owner is None:
            # asked of a product without that batch
            product = self.products.get(sku)
            if product is not None:
                change = partial(product.change_batch_quantity, cmd.ref, cmd.qty)
                self.assert_refused(change, ValueError if cmd.qty < 0 else KeyError)
            return
        if cmd.qty < 0:
            self.assert_refused(partial(owner.change_batch_quantity, cmd.ref, cmd.qty), ValueError)
            return
        self.assert_changed(owner, cmd)

    @rule(data=st.data())
    def lower_a_batch(self, data: st.DataObject) -> None:
        cmd = strategies.lowering(data, self.products.values())
        owner = self.owner(cmd.ref)
        assert owner is not None
        self.assert_changed(owner, cmd)

    def assert_changed(self, owner: Product, cmd: commands.ChangeBatchQuantity) -> None:
        versions, batches = state(self.products.values())
        [batch] = [b for b in owner.batches if b.reference == cmd.ref]
        held = set(batch.allocations)
        version = owner.version_number + 1
        out_of_stock, added = owner.out_of_stock, cmd.qty > batch.purchased_quantity
        by = cmd.qty - batch.purchased_quantity

        owner.change_batch_quantity(cmd.ref, cmd.qty)

        assert batch.purchased_quantity == cmd.qty
        if by == 0:  # the batch holds that already: no version, no event
            assert self.raised() == []
            assert state(self.products.values()) == (versions, batches)
            return
        assert owner.out_of_stock == (out_of_stock and not added)
        changed, *rest = self.raised()
        assert changed == events.BatchQuantityChanged(owner.sku, cmd.ref, cmd.qty, version, by)
        taken = [e for e in rest if isinstance(e, events.Deallocated)]
        assert taken == rest
        assert all((e.batchref, e.version) == (cmd.ref, version) for e in taken)
        deallocated = [OrderLine(e.orderid, e.sku, e.qty) for e in taken]
        assert len(set(deallocated)) == len(deallocated)
        assert batch.allocations == held - set(deallocated)
        if deallocated:
            # it stopped as soon as the rest fitted: the last line it took was needed
            assert batch.available_quantity < deallocated[-1].qty
        assert state(self.products.values()) == (
            versions | {owner.sku: version},
            batches | {cmd.ref: batch_state(batch)},
        )

    @invariant()
    def consistent(self) -> None:
        assert_consistent(self.products.values())


TestProducts = Products.TestCase
