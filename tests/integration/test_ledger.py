"""The stock ledger on PostgreSQL: replayed, it is the state; and nothing drifts.

Any sequence of batches added, lines allocated and cancelled, and batches
changed (their quantity and their arrival), through the service's own bus:
afterwards each batch's purchased and allocated units are the sum of its
ledger rows, the product's rows add up to what it has available, and
``allocation reconcile``'s checks find no drift between the write model, the
ledger and the read models.
"""

from __future__ import annotations

import contextlib
from datetime import date
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import select

from app.adapters import reconcile, tables
from app.config import Settings
from app.container import Container
from app.domain import commands
from app.domain.model import DuplicateBatch, LineConflict
from app.service_layer.handlers import InvalidSku, UnknownBatch, UnknownLine
from tests.support.fakes import FakeNotifications, FakePublisher
from tests.support.properties import property_settings
from tests.support.refs import random_ref

pytestmark = pytest.mark.postgres

BATCHES = 3
ORDERS = 5


@pytest.fixture
def settings(module_database: str) -> Settings:
    return Settings(database_url=module_database, read_database_url=None, relay_enabled=False)


@pytest.fixture
def container_overrides() -> dict[str, object]:
    return {"notifications": FakeNotifications(), "publisher": FakePublisher()}


etas = st.one_of(st.none(), st.dates(date(2030, 1, 1), date(2030, 12, 31)))
steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, BATCHES - 1), st.integers(1, 20), etas),
        st.tuples(st.just("allocate"), st.integers(0, ORDERS - 1), st.integers(1, 8)),
        st.tuples(st.just("cancel"), st.integers(0, ORDERS - 1)),
        st.tuples(st.just("resize"), st.integers(0, BATCHES - 1), st.integers(0, 25)),
        st.tuples(st.just("reschedule"), st.integers(0, BATCHES - 1), etas),
    ),
    min_size=1,
    max_size=25,
)


@hypothesis_settings(
    property_settings,
    max_examples=min(property_settings.max_examples, 25),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=steps)
async def test_the_ledger_replayed_is_the_state_and_nothing_drifts(
    container: Container, steps: list[tuple[Any, ...]]
) -> None:
    sku = random_ref("sku")
    refs = [f"{sku}-b{n}" for n in range(BATCHES)]
    orders = [f"{sku}-o{n}" for n in range(ORDERS)]
    bus = container.bus()
    for step in steps:
        command: commands.Command
        match step:
            case ("add", n, qty, eta):
                command = commands.CreateBatch(refs[n], sku, qty, eta)
            case ("allocate", n, qty):
                command = commands.Allocate(orders[n], sku, qty)
            case ("cancel", n):
                command = commands.Deallocate(orders[n], sku)
            case ("resize", n, qty):
                command = commands.ChangeBatch(refs[n], qty, reason="count")
            case ("reschedule", n, eta):
                command = commands.ChangeBatch(refs[n], eta=eta, new_eta=True)
        # Refused as a caller would be: changes nothing.
        with contextlib.suppress(
            UnknownBatch, UnknownLine, InvalidSku, LineConflict, DuplicateBatch
        ):
            await bus.handle(command)

    ledger, batches = tables.stock_ledger.c, tables.batches.c
    async with container.engine().connect() as conn:
        rows = (
            await conn.execute(
                select(ledger.kind, ledger.batchref, ledger.qty).where(ledger.sku == sku)
            )
        ).all()
        state = {
            ref: (purchased, allocated)
            for ref, purchased, allocated in (
                await conn.execute(
                    select(
                        batches.reference, batches.purchased_quantity, batches.allocated_quantity
                    ).where(batches.sku == sku)
                )
            ).all()
        }
        drifts = [line async for line in reconcile.drifts(conn) if sku in line]

    replayed: dict[str, list[int]] = {}
    for kind, ref, qty in rows:
        if ref is None:
            assert qty == 0, (kind, qty)  # a refusal, or a cancel that freed nothing
            continue
        counts = replayed.setdefault(ref, [0, 0])
        if kind in tables.PURCHASED:
            counts[0] += qty
        else:
            counts[1] -= qty
    assert {ref: tuple(c) for ref, c in replayed.items()} == state
    assert sum(qty for _, _, qty in rows) == sum(p - a for p, a in state.values())
    assert all(0 <= allocated <= purchased for purchased, allocated in state.values())
    assert drifts == []
