"""Fakes: real, in-memory implementations of the service's ports."""

from __future__ import annotations

from app.adapters.notifications import AbstractNotifications
from app.adapters.projections import AbstractReadModel
from app.adapters.repository import AbstractRepository
from app.domain import model
from app.service_layer.unit_of_work import AbstractUnitOfWork


class FakeRepository(AbstractRepository):
    def __init__(self, products: dict[str, model.Product]) -> None:
        super().__init__()
        self._products = products

    def _add(self, product: model.Product) -> None:
        self._products[product.sku] = product

    async def _get(self, sku: str, orderid: str | None) -> model.Product | None:
        return self._products.get(sku)

    async def _get_by_batchref(self, ref: str) -> model.Product | None:
        return next(
            (p for p in self._products.values() if any(b.reference == ref for b in p.batches)),
            None,
        )


class FakeReadModel(AbstractReadModel):
    def __init__(self, products: dict[str, model.Product]) -> None:
        self._products = products
        self.allocations: dict[tuple[str, str], tuple[str | None, int]] = {}
        self.batches: dict[str, dict[str, object]] = {}

    async def allocation_set(
        self, orderid: str, sku: str, batchref: str | None, version: int
    ) -> None:
        current = self.allocations.get((orderid, sku))
        if current is None or current[1] < version:
            self.allocations[(orderid, sku)] = (batchref, version)

    async def batch_refreshed(self, ref: str) -> None:
        for product in self._products.values():
            for b in product.batches:
                if b.reference == ref:
                    self.batches[ref] = {
                        "sku": b.sku,
                        "eta": b.eta,
                        "purchased": b.purchased_quantity,
                        "allocated": b.allocated_quantity,
                    }

    def allocations_of(self, orderid: str) -> list[dict[str, str]]:
        return [
            {"sku": sku, "batchref": batchref}
            for (o, sku), (batchref, _) in sorted(self.allocations.items())
            if o == orderid and batchref is not None
        ]


class FakeStore:
    """What the fake unit of work persists: shared by every unit of work of a test."""

    def __init__(self) -> None:
        self.products: dict[str, model.Product] = {}
        self.read_model = FakeReadModel(self.products)
        self.commits = 0


class FakeUnitOfWork(AbstractUnitOfWork):
    def __init__(self, store: FakeStore) -> None:
        self.store = store
        self.products = FakeRepository(store.products)
        self.read_model = store.read_model
        self.committed = False

    async def commit(self) -> None:
        self.committed = True
        self.store.commits += 1

    async def rollback(self) -> None:
        pass


class FakeNotifications(AbstractNotifications):
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send_out_of_stock(self, sku: str) -> None:
        self.sent.append(sku)
