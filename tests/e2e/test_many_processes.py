"""Several relays on one outbox: API processes and workers sharing one database.

First a backlog: one API, its relay off, publishes to a Redis where nothing
listens, so every ``line_allocated`` delivery fails and stays in the outbox.
Then several processes, each with a relay and a working Redis, drain it.
Every event is published, and none twice: with a healthy Redis, a duplicate
can only come from two relays delivering the same event.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.databases import query
from tests.support.outbox import outbox_pending
from tests.support.polling import eventually
from tests.support.processes import Processes, SlowProxy, dead_redis_url, service_env
from tests.support.redis import Subscriber
from tests.support.refs import random_ref
from tests.support.scenarios import add_batch, allocate

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

BACKLOG = 200  # orders whose line_allocated is not delivered at first
FRESH = 40  # orders sent to the two APIs while the backlog drains
SKUS = 4
CONCURRENCY = 4
DRAIN_TIMEOUT = 60.0


async def allocate_all(clients: list[httpx.AsyncClient], orders: dict[str, str]) -> None:
    """Allocate one unit of each order's sku, spread over the clients, a few at a time."""
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(n: int, orderid: str, sku: str) -> None:
        async with limit:
            http = clients[n % len(clients)]
            r = await http.post("/allocate", json={"orderid": orderid, "sku": sku, "qty": 1})
        assert r.status_code == 202, (http.base_url, r.text)

    await asyncio.gather(*(one(n, o, sku) for n, (o, sku) in enumerate(orders.items())))


async def allocated_events(database: str) -> dict[str, dict[str, Any]]:
    """Every Allocated event in the outbox, by id: its payload and whether delivered."""
    rows = await query(
        database,
        "SELECT id, payload, completed_at IS NOT NULL FROM outbox WHERE type = 'Allocated'",
    )
    return {id_: {**payload, "delivered": delivered} for id_, payload, delivered in rows}


async def make_backlog(
    processes: Processes, private_database: str, skus: list[str], orders: dict[str, str]
) -> None:
    """Allocate ``orders`` with no relay running and no Redis: all publishes pending."""
    offline = service_env(private_database, dead_redis_url(), relay_enabled=False)
    api = processes.api(offline, name="api-offline")
    await api.start_serving()
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
        for sku in skus:
            await add_batch(http, random_ref("batch"), sku, 1000, None)
        await allocate_all([http], orders)
    await api.shut_down()

    events = await allocated_events(private_database)
    assert len(events) == len(orders)
    assert not any(e["delivered"] for e in events.values())
    # Only the publishes failed: nothing else waits.
    assert await outbox_pending(private_database) == len(orders)


async def drained(database: str, subscriber: Subscriber, processes: Processes) -> None:
    async def empty() -> bool:
        return await outbox_pending(database) == 0

    await eventually(
        empty,
        DRAIN_TIMEOUT,
        lambda: (
            f"outbox not drained: {len(subscriber.messages)} messages so far\n" + processes.report()
        ),
        interval=0.25,
    )


def check_published_once(
    events: dict[str, dict[str, Any]],
    subscriber: Subscriber,
    skus: list[str],
    orders: dict[str, str],
    why: str = "two relays delivered the same event: a claim took events that another "
    "relay still held",
) -> None:
    """Every event published, with its own payload; then: none published twice."""
    assert all(e["delivered"] for e in events.values())
    received = subscriber.about(set(skus))
    counts = Counter(m.get("event_id") for m in received)
    missing = events.keys() - counts.keys()
    strangers = counts.keys() - events.keys()
    assert not missing, f"{len(missing)} events never published"
    assert not strangers, f"published but not in the outbox: {strangers}"
    fields = ("orderid", "sku", "qty", "batchref")
    for message in received:
        event = events[message["event_id"]]
        assert {k: message[k] for k in fields} == {k: event[k] for k in fields}
    assert set(Counter(m["orderid"] for m in received)) == set(orders)

    twice = {event_id for event_id, n in counts.items() if n > 1}
    if twice:
        start = min(subscriber.arrival(m) for m in received)
        firsts = sorted(
            {
                event_id: subscriber.arrival(m) - start
                for m in reversed(received)
                if (event_id := m["event_id"]) in twice
            }.values()
        )
        pytest.fail(
            f"{len(twice)} of {len(events)} events were published twice; "
            f"their first copies arrived {firsts[0]:.2f}s to {firsts[-1]:.2f}s after the "
            f"first message: {why}."
        )


async def test_two_apis_and_two_workers_deliver_every_event_exactly_once(
    private_database: str, redis_url: str, tmp_path: Path
) -> None:
    skus = [random_ref("sku") for _ in range(SKUS)]
    backlog = {random_ref("order"): skus[n % SKUS] for n in range(BACKLOG)}
    fresh = {random_ref("fresh"): skus[n % SKUS] for n in range(FRESH)}

    async with Processes(tmp_path) as processes:
        await make_backlog(processes, private_database, skus, backlog)

        online = service_env(private_database, redis_url, relay_interval=0.2)
        async with Subscriber(redis_url, "line_allocated") as line_allocated:
            apis = [processes.api(online, name=f"api-{n}") for n in (1, 2)]
            workers = [processes.worker(online, name=f"worker-{n}") for n in (1, 2)]
            for service in [*workers, *apis]:
                service.start()
            await asyncio.gather(*(api.serving() for api in apis))
            async with (
                httpx.AsyncClient(base_url=apis[0].url, timeout=30) as one,
                httpx.AsyncClient(base_url=apis[1].url, timeout=30) as two,
            ):
                await allocate_all([one, two], fresh)
            await asyncio.gather(*(worker.listening() for worker in workers))

            await drained(private_database, line_allocated, processes)
            await asyncio.gather(*(api.shut_down() for api in apis))
            for worker in workers:
                code = await worker.terminate()
                assert code == 0, f"{worker.name}: exit code {code}\n{processes.report()}"
            await line_allocated.received()

        events = await allocated_events(private_database)
        assert len(events) == BACKLOG + FRESH
        for service in [*apis, *workers]:
            assert "Traceback" not in service.output(), processes.report()
        check_published_once(events, line_allocated, skus, {**backlog, **fresh})


async def test_relays_never_share_an_event_however_slow_the_broker(
    private_database: str, redis_url: str, tmp_path: Path
) -> None:
    """Two workers, a slow broker: one relay's claim takes seconds to publish.

    The other relay skips the events the first holds (they are row-locked
    until its pass commits) and takes the rest: no event goes out twice.
    """
    skus = [random_ref("sku")]
    backlog = {random_ref("order"): skus[0] for _ in range(60)}

    async with Processes(tmp_path) as processes:
        await make_backlog(processes, private_database, skus, backlog)
        async with (
            Subscriber(redis_url, "line_allocated") as line_allocated,
            SlowProxy(redis_url, delay=0.05) as slow_redis,
        ):
            env = service_env(private_database, slow_redis.url, relay_interval=0.2)
            workers = [processes.worker(env, name=f"worker-{n}") for n in (1, 2)]
            for worker in workers:
                worker.start()
            await drained(private_database, line_allocated, processes)
            for worker in workers:
                code = await worker.terminate()
                assert code == 0, f"{worker.name}: exit code {code}\n{processes.report()}"
            await line_allocated.received()

        check_published_once(
            await allocated_events(private_database), line_allocated, skus, backlog
        )


async def test_reallocations_are_read_at_once_and_published_once(
    private_database: str, redis_url: str, tmp_path: Path
) -> None:
    """Shrinking a batch to nothing moves its lines to another batch, in the same transaction.

    The 202 of the PATCH is enough for every moved line to read as moved. Their
    ``line_allocated`` go out afterwards, from the outbox, through a slow
    broker from the API and a fast one from the worker: each exactly once.
    """
    lines = 20
    sku, warehouse, shipment = random_ref("sku"), random_ref("wh"), random_ref("ship")
    orders = {random_ref("order"): sku for _ in range(lines)}
    async with (
        Processes(tmp_path) as processes,
        Subscriber(redis_url, "line_allocated") as line_allocated,
        SlowProxy(redis_url, delay=0.1) as slow_redis,
    ):
        api = processes.api(service_env(private_database, slow_redis.url, relay_interval=0.2))
        await api.start_serving()
        worker = processes.worker(service_env(private_database, redis_url, relay_interval=0.2))
        await worker.start_listening()
        async with httpx.AsyncClient(base_url=api.url, timeout=60) as http:
            await add_batch(http, warehouse, sku, lines, None)
            await add_batch(http, shipment, sku, lines, "2031-01-01")
            for orderid in orders:
                await allocate(http, orderid, sku, 1)
            first = await allocated_events(private_database)
            assert len(first) == lines

            r = await http.patch(f"/batches/{warehouse}", json={"qty": 0})
            assert r.status_code == 202, r.text
            for orderid in orders:
                r = await http.get(f"/allocations/{orderid}")
                assert r.json() == [{"sku": sku, "batchref": shipment}], r.text
        await drained(private_database, line_allocated, processes)
        await api.shut_down()
        assert await worker.terminate() == 0, processes.report()
        await line_allocated.received()

    events = await allocated_events(private_database)
    assert len(events) == 2 * lines
    check_published_once(events, line_allocated, [sku], orders)
