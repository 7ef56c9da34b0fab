"""The handlers, driven through the real message bus and wired as app.container wires them."""

import re
from datetime import date

import pytest

from app.clock import position_now
from app.domain import commands
from app.domain.model import DuplicateBatch
from app.service_layer import handlers
from tests.support.buses import Service, bootstrap_test_bus
from tests.support.fakes import FakeNotifications, FakePublisher, FakeStore, FakeUnitOfWork
from tests.support.refs import random_ref


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def bus(store: FakeStore, notifications: FakeNotifications, publisher: FakePublisher) -> Service:
    return bootstrap_test_bus(store, notifications, publisher=publisher)


def batch_view(store: FakeStore, ref: str) -> tuple[object, object]:
    """(purchased, allocated) of batch ``ref`` as the read model has it."""
    row = store.read_model.batches[ref]
    return row["purchased"], row["allocated"]


class TestAddBatch:
    async def test_for_new_product(self, bus: Service, store: FakeStore) -> None:
        sku, ref = random_ref("sku"), random_ref("batch")

        await bus.handle(commands.CreateBatch(ref, sku, 100, None))

        assert [b.reference for b in store.products[sku].batches] == [ref]
        assert store.read_model.batches[ref] == {
            "sku": sku,
            "eta": None,
            "purchased": 100,
            "allocated": 0,
        }

    async def test_for_existing_product(self, bus: Service, store: FakeStore) -> None:
        sku, ref1, ref2 = random_ref("sku"), random_ref("b1"), random_ref("b2")

        await bus.handle(commands.CreateBatch(ref1, sku, 100, None))
        await bus.handle(commands.CreateBatch(ref2, sku, 99, date(2011, 1, 1)))

        assert list(store.products) == [sku]
        assert [b.reference for b in store.products[sku].batches] == [ref1, ref2]
        assert store.read_model.batches[ref2]["eta"] == date(2011, 1, 1)

    async def test_repeating_it_changes_nothing(self, bus: Service, store: FakeStore) -> None:
        sku, ref = random_ref("sku"), random_ref("batch")

        await bus.handle(commands.CreateBatch(ref, sku, 100, None))
        await bus.handle(commands.CreateBatch(ref, sku, 100, None))

        assert len(store.products[sku].batches) == 1
        assert store.products[sku].version_number == 1

    async def test_a_ref_taken_by_another_sku_is_refused(
        self, bus: Service, store: FakeStore
    ) -> None:
        sku, othersku, ref = random_ref("sku"), random_ref("other"), random_ref("batch")
        await bus.handle(commands.CreateBatch(ref, sku, 100, None))

        with pytest.raises(DuplicateBatch):
            await bus.handle(commands.CreateBatch(ref, othersku, 100, None))

        assert othersku not in store.products
        assert store.read_model.batches[ref]["sku"] == sku


class TestAllocate:
    async def test_shows_in_the_read_model(self, bus: Service, store: FakeStore) -> None:
        sku, ref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
        await bus.handle(commands.CreateBatch(ref, sku, 100, None))

        await bus.handle(commands.Allocate(orderid, sku, 10))

        assert store.read_model.allocations_of(orderid) == [{"sku": sku, "batchref": ref}]
        assert batch_view(store, ref) == (100, 10)

    async def test_errors_for_invalid_sku(self, bus: Service, store: FakeStore) -> None:
        sku, orderid = random_ref("sku"), random_ref("order")
        await bus.handle(commands.CreateBatch(random_ref("batch"), random_ref("sku"), 100, None))

        with pytest.raises(handlers.InvalidSku, match=f"^{re.escape(f'Invalid sku {sku}')}$"):
            await bus.handle(commands.Allocate(orderid, sku, 10))

        assert sku not in store.products
        assert store.read_model.allocations_of(orderid) == []

    async def test_commits(self, store: FakeStore, notifications: FakeNotifications) -> None:
        uows: list[FakeUnitOfWork] = []

        inline = handlers.INLINE_HANDLERS

        def uow_factory() -> FakeUnitOfWork:
            uows.append(FakeUnitOfWork(store, inline=inline))
            return uows[-1]

        bus = bootstrap_test_bus(store, notifications, uow_factory)
        sku = random_ref("sku")
        await bus.handle(commands.CreateBatch(random_ref("batch"), sku, 100, None))
        uows.clear()

        await bus.handle(commands.Allocate(random_ref("order"), sku, 10))

        # The command's own unit of work committed the allocation and its projection.
        assert [type(e).__name__ for e in uows[0].committed_events] == ["Allocated"]

    async def test_sends_out_of_stock_notification_when_no_stock(
        self,
        bus: Service,
        store: FakeStore,
        notifications: FakeNotifications,
        publisher: FakePublisher,
    ) -> None:
        sku, ref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
        await bus.handle(commands.CreateBatch(ref, sku, 9, None))

        await bus.handle(commands.Allocate(orderid, sku, 10))

        assert notifications.sent == [sku]
        assert publisher.published == []
        assert store.read_model.allocations_of(orderid) == []
        assert batch_view(store, ref) == (9, 0)

    async def test_allocating_the_same_line_again_changes_nothing(
        self, bus: Service, store: FakeStore, publisher: FakePublisher
    ) -> None:
        sku, ref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
        await bus.handle(commands.CreateBatch(ref, sku, 100, None))

        await bus.handle(commands.Allocate(orderid, sku, 10))
        await bus.handle(commands.Allocate(orderid, sku, 10))

        assert store.read_model.allocations_of(orderid) == [{"sku": sku, "batchref": ref}]
        assert batch_view(store, ref) == (100, 10)
        assert [channel for channel, _ in publisher.published] == ["line_allocated"]


class TestChangeBatchQuantity:
    async def test_deallocates_and_reallocates_to_another_batch(
        self,
        bus: Service,
        store: FakeStore,
        notifications: FakeNotifications,
        publisher: FakePublisher,
    ) -> None:
        sku, in_stock, shipment = random_ref("sku"), random_ref("stock"), random_ref("ship")
        order1, order2 = random_ref("o1"), random_ref("o2")
        await bus.handle(commands.CreateBatch(in_stock, sku, 50, None))
        await bus.handle(commands.CreateBatch(shipment, sku, 50, date.today()))
        await bus.handle(commands.Allocate(order1, sku, 20))
        await bus.handle(commands.Allocate(order2, sku, 20))
        assert batch_view(store, in_stock) == (50, 40)

        await bus.handle(commands.ChangeBatchQuantity(in_stock, 25))

        placed = store.read_model.allocations_of(order1) + store.read_model.allocations_of(order2)
        assert sorted(a["batchref"] for a in placed) == sorted([in_stock, shipment])
        assert batch_view(store, in_stock) == (25, 20)
        assert batch_view(store, shipment) == (50, 20)
        assert notifications.sent == []
        # The move is published: the last line_allocated names the new batch.
        assert publisher.published[-1][1]["batchref"] == shipment
        assert len(publisher.published) == 3

    async def test_when_reallocation_is_impossible_the_order_is_out_of_stock(
        self, bus: Service, store: FakeStore, notifications: FakeNotifications
    ) -> None:
        sku, ref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
        await bus.handle(commands.CreateBatch(ref, sku, 20, None))
        await bus.handle(commands.Allocate(orderid, sku, 20))

        await bus.handle(commands.ChangeBatchQuantity(ref, 10))

        assert notifications.sent == [sku]
        assert store.read_model.allocations_of(orderid) == []
        assert batch_view(store, ref) == (10, 0)

    async def test_errors_for_unknown_batch(self, bus: Service, store: FakeStore) -> None:
        sku, ref, unknown = random_ref("sku"), random_ref("batch"), random_ref("unknown")
        await bus.handle(commands.CreateBatch(ref, sku, 20, None))

        with pytest.raises(handlers.UnknownBatch, match=re.escape(unknown)):
            await bus.handle(commands.ChangeBatchQuantity(unknown, 10))

        assert batch_view(store, ref) == (20, 0)
        assert store.products[sku].version_number == 1

    async def test_a_stream_entry_older_than_one_applied_changes_nothing(
        self, bus: Service, store: FakeStore
    ) -> None:
        sku, ref = random_ref("sku"), random_ref("batch")
        await bus.handle(commands.CreateBatch(ref, sku, 20, None))
        await bus.handle(commands.ChangeBatchQuantity(ref, 7, position=(1000, 2)))

        for older in [(1000, 1), (999, 5), (1000, 2)]:
            with pytest.raises(handlers.Superseded):
                await bus.handle(commands.ChangeBatchQuantity(ref, 3, position=older))

        assert batch_view(store, ref) == (7, 0)
        await bus.handle(commands.ChangeBatchQuantity(ref, 9, position=(1000, 10)))
        assert batch_view(store, ref) == (9, 0)
        assert store.positions == {ref: (1000, 10)}

    async def test_a_change_as_of_now_applies_and_outdates_what_came_before(
        self, bus: Service, store: FakeStore
    ) -> None:
        sku, ref = random_ref("sku"), random_ref("batch")
        await bus.handle(commands.CreateBatch(ref, sku, 20, None))
        sent = position_now()
        await bus.handle(commands.ChangeBatchQuantity(ref, 7, position=(1000, 2)))

        await bus.handle(commands.ChangeBatchQuantity(ref, 4))  # as PATCH sends it

        assert batch_view(store, ref) == (4, 0)
        assert store.positions[ref] >= sent
        # A stream entry added before it, read after it (a consumer died holding it):
        with pytest.raises(handlers.Superseded):
            await bus.handle(commands.ChangeBatchQuantity(ref, 50, position=sent))
        assert batch_view(store, ref) == (4, 0)

    async def test_a_change_as_of_now_applies_after_one_from_a_clock_ahead(
        self, bus: Service, store: FakeStore
    ) -> None:
        sku, ref = random_ref("sku"), random_ref("batch")
        await bus.handle(commands.CreateBatch(ref, sku, 20, None))
        ahead = (position_now()[0] + 60_000, 3)  # a broker whose clock runs a minute fast
        await bus.handle(commands.ChangeBatchQuantity(ref, 7, position=ahead))

        await bus.handle(commands.ChangeBatchQuantity(ref, 4))

        assert batch_view(store, ref) == (4, 0)
        assert store.positions[ref] == (ahead[0], 4)
