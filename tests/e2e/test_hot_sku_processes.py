"""A flash sale across processes: two APIs and a worker on one sku, on PostgreSQL.

Orders for one sku go to two uvicorn processes at once, many more than
there are units, while the worker applies restocks of the same sku from the
``change_batch_quantity`` stream. Afterwards:

- every caller got its own answer: a 202 for each line of the sale, a 400
  for an unknown sku, a 409 for an order asking again for another quantity,
  the first answer again for a repeated ``Idempotency-Key`` (sent to the
  other process);
- every accepted line reads as allocated or out of stock, from either
  process; no line is allocated twice, no batch beyond its units;
- the service recorded one order for all of it: each allocation and each
  restock is one version of the product, none shared, none missing, and
  each refused line carries the version it saw. Handling the same commands
  one at a time in that order (the service on fakes) gives every line the
  same batch or refusal, the batches the same counts, the stock-outs the
  same first refused orders;
- each stock-out sent one mail, to a real SMTP server.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from app.domain import commands, events
from tests.support.buses import bootstrap_test_bus
from tests.support.databases import query
from tests.support.fakes import FakeNotifications, FakeStore
from tests.support.outbox import outbox_pending
from tests.support.polling import eventually
from tests.support.processes import Processes, service_env
from tests.support.refs import random_ref
from tests.support.scenarios import add_batch
from tests.support.servers import RedisServer, SmtpSink

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

ORDERS = 240  # for 30 units at first, 48 after the restocks
CONCURRENCY = 24
RESTOCKS = (26, 32, 38)  # the warehouse batch's quantity, set as the sale goes on
KEYED = 12  # orders sent with an Idempotency-Key
NOTIFY = "stock@example.com"


@dataclass
class Sale:
    sku: str
    now: str  # the warehouse batch
    later: str  # a shipment
    apis: list[httpx.AsyncClient]
    redis: Redis


@pytest.fixture
async def sale(
    private_database: str, redis_server: RedisServer, smtp: SmtpSink, tmp_path: Path
) -> AsyncIterator[Sale]:
    env = service_env(
        private_database,
        redis_server.url,
        relay_interval=0.2,
        smtp_host="127.0.0.1",
        smtp_port=smtp.port,
        notify_email=NOTIFY,
    )
    async with Processes(tmp_path) as processes, Redis.from_url(redis_server.url) as redis:
        apis = [processes.api(env, name=f"api{n}") for n in (1, 2)]
        worker = processes.worker(env)
        for process in (*apis, worker):
            process.start()
        for api in apis:
            await api.serving()
        await worker.reading()
        async with (
            httpx.AsyncClient(base_url=apis[0].url, timeout=30) as first,
            httpx.AsyncClient(base_url=apis[1].url, timeout=30) as second,
        ):
            sku = random_ref("sku")
            now, later = random_ref("now"), random_ref("later")
            await add_batch(first, now, sku, 20)
            await add_batch(second, later, sku, 10, "2031-01-01")
            try:
                yield Sale(sku, now, later, [first, second], redis)
            except BaseException:
                print(processes.report())
                raise


async def run_the_sale(sale: Sale) -> dict[str, tuple[int, dict[str, str], bytes]]:
    """Every order, spread over both APIs, restocks in between; each answer by order."""
    orders = [(f"{sale.sku}-o{n}", 1 + n % 3) for n in range(ORDERS)]
    answers: dict[str, tuple[int, dict[str, str], bytes]] = {}
    gate = asyncio.Semaphore(CONCURRENCY)

    async def order(n: int, orderid: str, qty: int) -> None:
        headers = {"Idempotency-Key": f"key-{orderid}"} if n < KEYED else {}
        body = {"orderid": orderid, "sku": sale.sku, "qty": qty}
        async with gate:
            r = await sale.apis[n % 2].post("/allocate", json=body, headers=headers)
        answers[orderid] = (r.status_code, dict(r.headers), r.content)

    async def restock() -> None:
        for qty, share in zip(RESTOCKS, (4, 2, 4 / 3), strict=True):
            await eventually(lambda s=share: len(answers) >= ORDERS / s, 60, "the sale stalled")
            await sale.redis.xadd("change_batch_quantity", {"batchref": sale.now, "qty": qty})

    await asyncio.gather(restock(), *(order(n, o, q) for n, (o, q) in enumerate(orders)))
    return answers


async def settled(database: str, sale: Sale, smtp: SmtpSink) -> None:
    async def done() -> bool:
        [(purchased,)] = await query(
            database, "SELECT purchased_quantity FROM batches WHERE reference = :r", r=sale.now
        )
        return purchased == RESTOCKS[-1] and await outbox_pending(database) == 0

    await eventually(done, 60, "the restocks and the mails still going")


@dataclass(frozen=True)
class Applied:
    """One step of the record, at the product version it made or saw."""

    version: int
    kind: str  # "allocated", "restocked" or "refused"
    orderid: str = ""
    qty: int = 0
    batchref: str = ""


async def the_record(database: str, sale: Sale) -> tuple[list[Applied], list[str | None]]:
    """What the service recorded about the sku, in the order it applied it; stock-outs' orders."""
    allocated = [
        Applied(version, "allocated", p["orderid"], p["qty"], p["batchref"])
        for version, p in await query(
            database,
            "SELECT version, payload FROM outbox WHERE sku = :sku AND type = 'Allocated'",
            sku=sale.sku,
        )
    ]
    refused = [
        Applied(version, "refused", orderid, qty)
        for orderid, qty, version in await query(
            database,
            "SELECT orderid, qty, version FROM order_lines_view"
            " WHERE sku = :sku AND state = 'out_of_stock'",
            sku=sale.sku,
        )
    ]
    stock_outs = [
        p.get("orderid")
        for (p,) in await query(
            database,
            "SELECT payload FROM outbox WHERE sku = :sku AND type = 'OutOfStock'",
            sku=sale.sku,
        )
    ]
    [(last,)] = await query(
        database, "SELECT version_number FROM products WHERE sku = :sku", sku=sale.sku
    )
    versions = Counter(a.version for a in allocated)
    assert max(versions.values()) == 1, "two allocations made one version"
    # The versions no allocation made are the restocks', in the stream's order
    # (the first two are the batches').
    others = [v for v in range(3, last + 1) if v not in versions]
    assert len(others) == len(RESTOCKS), f"versions {others} for {len(RESTOCKS)} restocks"
    restocked = [
        Applied(v, "restocked", qty=qty, batchref=sale.now)
        for v, qty in zip(others, RESTOCKS, strict=True)
    ]
    first_refused = set(stock_outs)

    def applied_at(a: Applied) -> tuple[int, int, int]:
        # A change makes version v from the state at v - 1; a refusal saw its
        # version v, so it came after the change that made v and before the
        # one that made v + 1. Refusals at one version change nothing but the
        # stock-out: the one that began it goes first.
        if a.kind == "refused":
            return (a.version, 0, 0 if a.orderid in first_refused else 1)
        return (a.version - 1, 1, 0)

    return sorted(allocated + restocked + refused, key=applied_at), stock_outs


async def test_a_sale_across_processes_comes_out_as_one_order_at_a_time(
    sale: Sale, smtp: SmtpSink, private_database: str
) -> None:
    answers = await run_the_sale(sale)
    await settled(private_database, sale, smtp)
    first = sale.apis[0]

    # Each caller's own answer.
    assert Counter(status for status, _, _ in answers.values()) == {202: ORDERS}
    unknown = [
        await first.post("/allocate", json={"orderid": f"u{n}", "sku": random_ref("x"), "qty": 1})
        for n in range(4)
    ]
    assert [r.status_code for r in unknown] == [400] * 4
    for n, (orderid, qty) in enumerate(
        itertools.islice(((f"{sale.sku}-o{n}", 1 + n % 3) for n in range(ORDERS)), KEYED)
    ):
        status, _, body = answers[orderid]
        again = await sale.apis[(n + 1) % 2].post(
            "/allocate",
            json={"orderid": orderid, "sku": sale.sku, "qty": qty},
            headers={"Idempotency-Key": f"key-{orderid}"},
        )
        assert (again.status_code, again.content) == (status, body)
        assert again.headers["Idempotent-Replayed"] == "true"

    # What every accepted line reads as, from either process.
    states: dict[str, str] = {}
    for n, orderid in enumerate(answers):
        r = await sale.apis[n % 2].get(f"/orders/{orderid}")
        assert r.status_code == 200, (orderid, r.text)
        [line] = r.json()["lines"]
        states[orderid] = line["state"]
    assert set(states.values()) <= {"allocated", "out_of_stock"}

    # One order recorded for everything, and one at a time in it gives the same.
    record, stock_outs = await the_record(private_database, sale)
    store = FakeStore()
    model = bootstrap_test_bus(store, FakeNotifications())
    await model.handle(commands.CreateBatch(sale.now, sale.sku, 20))
    await model.handle(commands.CreateBatch(sale.later, sale.sku, 10, date(2031, 1, 1)))
    for step in record:
        if step.kind == "restocked":
            await model.handle(commands.ChangeBatchQuantity(step.batchref, step.qty))
            assert store.products[sale.sku].version_number == step.version
            continue
        await model.handle(commands.Allocate(step.orderid, sale.sku, step.qty))
        held = store.read_model.allocations.get((step.orderid, sale.sku))
        if step.kind == "allocated":
            assert held == step.batchref, step
            assert store.products[sale.sku].version_number == step.version, step
        else:
            assert held is None, step
            assert store.read_model.refused_at[(step.orderid, sale.sku)] == step.version, step
    assert {a.orderid for a in record if a.kind != "restocked"} == set(answers)
    assert {o for o, s in states.items() if s == "allocated"} == {
        a.orderid for a in record if a.kind == "allocated"
    }
    model_stock_outs = [e.orderid for e in store.history if isinstance(e, events.OutOfStock)]
    assert sorted(map(str, stock_outs)) == sorted(map(str, model_stock_outs))
    batches = dict(
        await query(
            private_database,
            "SELECT reference, allocated_quantity FROM batches WHERE sku = :sku",
            sku=sale.sku,
        )
    )
    assert batches == {b.reference: b.allocated_quantity for b in store.products[sale.sku].batches}

    # Lines did share transactions: events stored by one commit share its time.
    [(most,)] = await query(
        private_database,
        "SELECT max(n) FROM (SELECT count(*) AS n FROM outbox WHERE sku = :sku"
        " AND type = 'Allocated' GROUP BY created_at) AS commits",
        sku=sale.sku,
    )
    assert most > 1

    # No line twice, no batch beyond its units, each count the sum of its lines.
    [(lines, distinct, units, over)] = await query(
        private_database,
        "SELECT count(*), count(DISTINCT l.orderid), coalesce(sum(l.qty), 0),"
        " (SELECT count(*) FROM batches WHERE sku = :sku"
        "  AND allocated_quantity > purchased_quantity)"
        " FROM order_lines l JOIN allocations a ON a.orderline_id = l.id WHERE l.sku = :sku",
        sku=sale.sku,
    )
    assert (lines, units, over) == (distinct, sum(batches.values()), 0)

    # One mail per stock-out, naming its first refused order.
    mails = smtp.about(sale.sku)
    assert len(mails) == len(stock_outs) >= 1
    bodies = [m.message.get_body().get_content() for m in mails]  # type: ignore[union-attr, unused-ignore]
    for named in stock_outs:
        assert sum(f"Order {named} " in body for body in bodies) == 1, (named, bodies)
    assert len({m.message["Message-ID"] for m in mails}) == len(mails)
