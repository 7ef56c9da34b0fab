"""Group commit on PostgreSQL: the outcomes of one command at a time, however commands are grouped.

The property: allocations sent by concurrent callers through the service's
bus, as many HTTP requests would, on the real unit of work and PostgreSQL,
come out as handling them one by one in the order the service applied them
would make them: every caller's answer, every line's batch or refusal, each
batch's count, the product's version, the stock-out notice. That order is
the one the calls reached the bus in (one process applies the commands of a
product in the order they came), and the service records it: an allocation
carries the product version it made, a refused line the version it was
refused at; the test checks those against the model's. The model is the
service on fakes (tests/support/buses.py), one command after another.

Then the contracts a group keeps for each of its callers, over HTTP: a 409
for one line, a replayed Idempotency-Key, an out-of-stock line, a 503 for
all of a group whose transaction the database lost, with nothing written.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.container import Container
from app.domain import commands, events
from app.main import create_app
from app.service_layer.messagebus import MessageBus
from tests.support.apps import serving
from tests.support.buses import bootstrap_test_bus
from tests.support.fakes import FakeNotifications, FakePublisher, FakeStore
from tests.support.faults import lose_a_groups_commit
from tests.support.polling import eventually
from tests.support.properties import property_settings
from tests.support.refs import random_ref

pytestmark = pytest.mark.postgres


@pytest.fixture
def settings(module_database: str) -> Settings:
    return Settings(database_url=module_database, read_database_url=None, relay_enabled=False)


@pytest.fixture
def container_overrides() -> dict[str, object]:
    return {"notifications": FakeNotifications(), "publisher": FakePublisher()}


@dataclass(frozen=True)
class Call:
    """A caller's line, and how many turns of the event loop it lets pass before sending it."""

    orderid: str
    sku: str  # "main", "other" or "unknown": the example's own skus replace them
    qty: int
    delay: int


calls = st.lists(
    st.builds(
        Call,
        orderid=st.sampled_from([f"order-{n}" for n in range(6)]),
        sku=st.sampled_from(["main", "main", "main", "other", "unknown"]),
        qty=st.integers(1, 4),
        delay=st.integers(0, 3),
    ),
    min_size=1,
    max_size=24,
)
stock = st.lists(
    st.tuples(st.integers(0, 8), st.none() | st.sampled_from([date(2031, 1, d) for d in (1, 2)])),
    min_size=1,
    max_size=3,
)


@dataclass
class Outcomes:
    """What callers were answered, and what the write model and read models hold after."""

    answers: list[str]  # per call, in the order the calls were sent
    allocations: dict[tuple[str, str], tuple[str, int]]  # (orderid, sku): (batch, version)
    refused: dict[tuple[str, str], tuple[int, int]]  # (orderid, sku): (qty, version)
    batches: dict[str, int]  # ref: units allocated
    versions: dict[str, int]
    stock_outs: list[tuple[str, str | None]]  # (sku, first refused order)


def answer(outcome: BaseException | None) -> str:
    return "accepted" if outcome is None else type(outcome).__name__


async def on_the_service(
    bus: MessageBus, batches: list[commands.CreateBatch], lines: list[tuple[commands.Allocate, int]]
) -> tuple[list[int], list[str]]:
    """Send the lines concurrently; the order they reached the bus in, and each one's answer."""
    for batch in batches:
        await bus.handle(batch)
    sent: list[int] = []

    async def send(index: int, line: commands.Allocate, delay: int) -> str:
        for _ in range(delay):
            await asyncio.sleep(0)
        sent.append(index)  # no await between this and the bus taking the line
        try:
            await bus.handle(line)
        except Exception as e:
            return answer(e)
        return answer(None)

    answers = await asyncio.gather(*(send(i, line, d) for i, (line, d) in enumerate(lines)))
    return sent, list(answers)


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list(await conn.execute(text(sql), params))


async def recorded(engine: AsyncEngine, skus: list[str], answers: list[str]) -> Outcomes:
    """The outcomes as the database has them."""
    allocations = await rows(
        engine,
        "SELECT orderid, sku, batchref, version FROM allocations_view"
        " WHERE sku = ANY(:skus) AND batchref IS NOT NULL",
        skus=skus,
    )
    refused = await rows(
        engine,
        "SELECT r.orderid, r.sku, r.qty, r.version FROM order_lines_view r"
        " WHERE r.state = 'out_of_stock' AND r.sku = ANY(:skus)"
        " AND NOT EXISTS (SELECT 1 FROM allocations_view a"
        " WHERE a.orderid = r.orderid AND a.sku = r.sku AND a.batchref IS NOT NULL)",
        skus=skus,
    )
    batches = await rows(
        engine,
        "SELECT reference, allocated_quantity FROM batches WHERE sku = ANY(:skus)",
        skus=skus,
    )
    versions = await rows(
        engine, "SELECT sku, version_number FROM products WHERE sku = ANY(:skus)", skus=skus
    )
    stock_outs = await rows(
        engine,
        "SELECT sku, payload FROM outbox WHERE type = 'OutOfStock' AND sku = ANY(:skus)",
        skus=skus,
    )
    return Outcomes(
        answers=answers,
        allocations={(o, s): (b, v) for o, s, b, v in allocations},
        refused={(o, s): (q, v) for o, s, q, v in refused},
        batches=dict(batches),
        versions=dict(versions),
        stock_outs=sorted((sku, payload.get("orderid")) for sku, payload in stock_outs),
    )


async def one_at_a_time(
    batches: list[commands.CreateBatch], lines: list[commands.Allocate], order: list[int]
) -> Outcomes:
    """The model: the service on fakes, each line handled alone, in ``order``."""
    store = FakeStore()
    service = bootstrap_test_bus(store, FakeNotifications())
    for batch in batches:
        await service.handle(batch)
    answers: dict[int, str] = {}
    for index in order:
        try:
            await service.handle(lines[index])
        except Exception as error:
            answers[index] = answer(error)
        else:
            answers[index] = answer(None)
    allocated: dict[tuple[str, str], int] = {}
    for e in store.history:
        if isinstance(e, events.Allocated):
            allocated[(e.orderid, e.sku)] = e.version
    allocations = {
        (line.orderid, line.sku): (batch.reference, allocated[(line.orderid, line.sku)])
        for product in store.products.values()
        for batch in product.batches
        for line in batch.allocations
    }
    refused = {
        key: (qty, store.read_model.refused_at[key])
        for key, qty in store.read_model.refused.items()
        if key not in allocations
    }
    return Outcomes(
        answers=[answers[i] for i in range(len(lines))],
        allocations=allocations,
        refused=refused,
        batches={
            b.reference: b.allocated_quantity for p in store.products.values() for b in p.batches
        },
        versions={p.sku: p.version_number for p in store.products.values()},
        stock_outs=sorted(
            (e.sku, e.orderid) for e in store.history if isinstance(e, events.OutOfStock)
        ),
    )


@hypothesis_settings(property_settings, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(main=stock, other=stock, calls=calls)
async def test_lines_sent_at_once_come_out_as_one_at_a_time_in_the_order_applied(
    container: Container,
    main: list[tuple[int, date | None]],
    other: list[tuple[int, date | None]],
    calls: list[Call],
) -> None:
    names = {"main": random_ref("main"), "other": random_ref("other"), "unknown": random_ref("x")}
    run = random_ref("run")  # orders of one example are its own
    batches = [
        commands.CreateBatch(f"{names[sku]}-b{n}", names[sku], qty, eta)
        for sku, stocked in (("main", main), ("other", other))
        for n, (qty, eta) in enumerate(stocked)
    ]
    lines = [(commands.Allocate(f"{run}-{c.orderid}", names[c.sku], c.qty), c.delay) for c in calls]

    order, answers = await on_the_service(container.bus(), batches, lines)
    service = await recorded(container.engine(), list(names.values()), answers)
    model = await one_at_a_time(batches, [line for line, _ in lines], order)

    assert service.answers == model.answers
    assert service.allocations == model.allocations
    assert service.refused == model.refused
    assert service.batches == model.batches
    assert service.versions == model.versions
    assert service.stock_outs == model.stock_outs
    for outcome in set(answers):
        event(f"a call answered {outcome}")
    shared = await rows(
        container.engine(),
        "SELECT max(n) FROM (SELECT count(*) AS n FROM outbox WHERE sku = ANY(:skus)"
        " GROUP BY created_at) AS commits",
        skus=list(names.values()),
    )
    event(f"at most {shared[0][0]} events stored by one commit")


# -- over HTTP: what each caller of a group is answered ------------------------


@asynccontextmanager
async def product_locked(engine: AsyncEngine, sku: str) -> AsyncIterator[int]:
    """The product's row lock held by another transaction (its backend's pid) until leaving."""
    async with engine.connect() as conn, conn.begin():
        await conn.execute(text("SELECT 1 FROM products WHERE sku = :sku FOR UPDATE"), {"sku": sku})
        pid: int = await conn.scalar(text("SELECT pg_backend_pid()"))
        yield pid


async def blocked_on(engine: AsyncEngine, pid: int) -> bool:
    found = await rows(
        engine,
        "SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))",
        pid=pid,
    )
    return bool(found[0][0])


Request = Callable[[], Coroutine[Any, Any, httpx.Response]]


async def in_one_group(
    app: FastAPI, client: httpx.AsyncClient, sku: str, requests: list[Request], waiting: int
) -> list[httpx.Response]:
    """Send ``requests`` while an allocation of ``sku`` waits for the product's lock.

    The ``waiting`` of them that reach the bus share the next transaction:
    their answers, once the lock is let go, in the order sent.
    """
    container: Container = app.state.services
    engine = container.engine()
    async with product_locked(engine, sku) as pid:
        opener = asyncio.create_task(allocate(client, random_ref("opener"), sku, 1))
        await eventually(lambda: blocked_on(engine, pid), 10, "the first allocation never waited")
        calls = [asyncio.create_task(request()) for request in requests]
        await eventually(
            lambda: container.group_commit().waiting() == waiting,
            10,
            lambda: f"{container.group_commit().waiting()} waiting, not {waiting}",
        )
    assert (await opener).status_code == 202
    return list(await asyncio.gather(*calls))


async def allocate(
    client: httpx.AsyncClient, orderid: str, sku: str, qty: int, key: str | None = None
) -> httpx.Response:
    headers = {} if key is None else {"Idempotency-Key": key}
    body = {"orderid": orderid, "sku": sku, "qty": qty}
    return await client.post("/allocate", json=body, headers=headers)


async def line_state(client: httpx.AsyncClient, orderid: str) -> str | None:
    """The state GET /orders/{orderid} gives its one line, or None for no such order."""
    r = await client.get(f"/orders/{orderid}")
    if r.status_code == 404:
        return None
    [line] = r.json()["lines"]
    state: str = line["state"]
    return state


@pytest.fixture
def app(module_database: str) -> FastAPI:
    return create_app(Settings(database_url=module_database, relay_enabled=False))


async def test_each_caller_of_a_group_gets_its_own_answer(app: FastAPI) -> None:
    sku, ref = random_ref("sku"), random_ref("batch")
    held, fits, big, keyed, fresh = (random_ref(n) for n in ("held", "fits", "big", "k", "f"))
    first_key, new_key = random_ref("key"), random_ref("key")
    async with serving(app) as client:
        r = await client.post("/add_batch", json={"ref": ref, "sku": sku, "qty": 6, "eta": None})
        assert r.status_code == 201
        assert (await allocate(client, held, sku, 1)).status_code == 202
        first = await allocate(client, keyed, sku, 1, key=first_key)
        assert first.status_code == 202

        answers = await in_one_group(
            app,
            client,
            sku,
            [
                lambda: allocate(client, fits, sku, 2),
                lambda: allocate(client, held, sku, 3),  # holds 1: a conflict
                lambda: allocate(client, keyed, sku, 1, key=first_key),  # a repeat
                lambda: allocate(client, big, sku, 5),  # 2 left by then
                lambda: allocate(client, fresh, sku, 1, key=new_key),
                lambda: allocate(client, random_ref("o"), random_ref("unknown"), 1),
            ],
            waiting=4,  # the repeat is answered from its key, the unknown sku at once
        )

        fitted, conflict, repeat, refused, keyed_now, unknown = answers
        assert fitted.status_code == 202
        assert conflict.status_code == 409
        assert conflict.json()["message"] == (
            f"Order {held} already has 1 of {sku} allocated to batch {ref}"
        )
        assert repeat.status_code == 202
        assert repeat.headers["Idempotent-Replayed"] == "true"
        assert repeat.content == first.content
        assert refused.status_code == 202  # accepted: out of stock, as it reads
        assert keyed_now.status_code == 202
        assert unknown.status_code == 400
        assert unknown.json()["message"].startswith("Invalid sku ")
        # what each line reads as
        assert await line_state(client, fits) == "allocated"
        assert await line_state(client, held) == "allocated"
        assert await line_state(client, big) == "out_of_stock"
        assert await line_state(client, fresh) == "allocated"
        again = await allocate(client, fresh, sku, 1, key=new_key)
        assert (again.status_code, again.headers.get("Idempotent-Replayed")) == (202, "true")
        batch = (await client.get(f"/batches/{ref}")).json()
        # opener 1, held 1, keyed 1, fits 2, fresh 1: the conflict changed nothing
        assert (batch["allocated"], batch["available"]) == (6, 0)


async def test_a_group_whose_transaction_the_database_lost_is_a_503_for_each_and_writes_nothing(
    app: FastAPI,
) -> None:
    faults = lose_a_groups_commit(app.state.services)
    sku, ref = random_ref("sku"), random_ref("batch")
    orders = [random_ref("order") for _ in range(4)]
    key = random_ref("key")
    async with serving(app) as client:
        r = await client.post("/add_batch", json={"ref": ref, "sku": sku, "qty": 3, "eta": None})
        assert r.status_code == 201
        before = (await client.get(f"/batches/{ref}")).json()

        answers = await in_one_group(
            app,
            client,
            sku,
            [lambda o=o: allocate(client, o, sku, 1) for o in orders[:3]]
            + [lambda: allocate(client, orders[3], sku, 1, key=key)],
            waiting=4,
        )

        assert faults.struck == 1
        assert [a.status_code for a in answers] == [503] * 4
        assert all(a.headers["Retry-After"] for a in answers)
        # nothing of the group: no line, no view row, no event, the count as it was
        assert [await line_state(client, o) for o in orders] == [None] * 4
        after = (await client.get(f"/batches/{ref}")).json()
        assert after["allocated"] == before["allocated"] + 1  # the first allocation's
        engine = app.state.services.engine()
        written = await rows(
            engine,
            "SELECT (SELECT count(*) FROM order_lines WHERE orderid = ANY(:o)),"
            " (SELECT count(*) FROM outbox WHERE payload->>'orderid' = ANY(:o)),"
            " (SELECT count(*) FROM order_lines_view WHERE orderid = ANY(:o))",
            o=orders,
        )
        assert tuple(written[0]) == (0, 0, 0)

        # The database is back: sent again, the lines go, the key too.
        again = [await allocate(client, o, sku, 1) for o in orders[:3]]
        again.append(await allocate(client, orders[3], sku, 1, key=key))
        assert [a.status_code for a in again] == [202] * 4
        assert [await line_state(client, o) for o in orders] == ["allocated"] * 2 + [
            "out_of_stock"
        ] * 2
