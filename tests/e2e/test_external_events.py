"""The book's external events, over a real Redis: uvicorn and ``allocation worker``.

A ``change_batch_quantity`` message reaches the worker, which deallocates and
reallocates; the new allocation is published as ``line_allocated`` and read
back over HTTP from the API process.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from tests.support.polling import eventually
from tests.support.processes import Api, Processes, Worker, service_env
from tests.support.redis import Subscriber
from tests.support.refs import random_ref
from tests.support.scenarios import add_batch, allocate

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

DEADLINE = 10.0  # seconds for a message to have its effect


@dataclass
class Stack:
    processes: Processes
    api: Api
    worker: Worker
    http: httpx.AsyncClient
    redis: Redis
    line_allocated: Subscriber
    dead_letter_key: str


@pytest.fixture
async def stack(module_database: str, redis_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    """An API and a worker on the module's database, and a line_allocated subscriber."""
    dead_letter_key = f"test:dead-letters:{uuid.uuid4().hex}"
    env = service_env(
        module_database, redis_url, relay_interval=0.2, dead_letter_key=dead_letter_key
    )
    async with Processes(tmp_path) as processes:
        api, worker = await processes.start_api_and_worker(env)
        redis = Redis.from_url(redis_url)
        try:
            async with (
                httpx.AsyncClient(base_url=api.url, timeout=30) as http,
                Subscriber(redis_url, "line_allocated") as line_allocated,
            ):
                yield Stack(processes, api, worker, http, redis, line_allocated, dead_letter_key)
        finally:
            await redis.delete(dead_letter_key)
            await redis.aclose()


async def allocations_of(stack: Stack, orderid: str) -> tuple[int, Any]:
    r = await stack.http.get(f"/allocations/{orderid}")
    return r.status_code, r.json()


async def test_change_batch_quantity_message_reallocates_and_publishes(stack: Stack) -> None:
    orderid, sku = random_ref("order"), random_ref("sku")
    earlier, later = random_ref("batch1"), random_ref("batch2")
    await add_batch(stack.http, earlier, sku, 10, "2011-01-01")
    await add_batch(stack.http, later, sku, 10, "2011-01-02")

    await allocate(stack.http, orderid, sku, 10)

    await eventually(
        lambda: bool(stack.line_allocated.where(orderid=orderid)),
        DEADLINE,
        lambda: f"no line_allocated for {orderid}\n{stack.processes.report()}",
    )
    [first] = stack.line_allocated.where(orderid=orderid)
    assert first["batchref"] == earlier
    assert (first["sku"], first["qty"]) == (sku, 10)
    assert first["event_id"]

    await stack.redis.publish("change_batch_quantity", json.dumps({"batchref": earlier, "qty": 5}))

    await eventually(
        lambda: bool(stack.line_allocated.where(orderid=orderid, batchref=later)),
        DEADLINE,
        lambda: (
            f"no reallocation to {later}: {stack.line_allocated.where(orderid=orderid)}\n"
            + stack.processes.report()
        ),
    )
    [second] = stack.line_allocated.where(orderid=orderid, batchref=later)
    assert (second["sku"], second["qty"]) == (sku, 10)
    assert second["event_id"]
    assert second["event_id"] != first["event_id"]

    async def reads_later() -> bool:
        return await allocations_of(stack, orderid) == (200, [{"sku": sku, "batchref": later}])

    await eventually(
        reads_later,
        DEADLINE,
        lambda: (
            f"GET /allocations/{orderid}: {stack.line_allocated.where(orderid=orderid)}\n"
            + stack.processes.report()
        ),
    )
    r = await stack.http.get(f"/batches/{earlier}")
    assert (r.json()["purchased"], r.json()["allocated"]) == (5, 0), r.text
    # Each allocation was published once: the first, then the reallocation.
    await stack.line_allocated.received()
    assert [m["batchref"] for m in stack.line_allocated.where(orderid=orderid)] == [
        earlier,
        later,
    ]


async def test_worker_dead_letters_malformed_messages_and_unknown_batches(stack: Stack) -> None:
    sku, ref = random_ref("sku"), random_ref("batch")
    await add_batch(stack.http, ref, sku, 10, None)
    unknown = random_ref("unknown")
    bad = [
        "not json at all",
        json.dumps(["a", "list"]),
        json.dumps({"batchref": ref}),  # no qty
        json.dumps({"batchref": ref, "qty": -1}),
        json.dumps({"batchref": ref, "qty": "lots"}),
        json.dumps({"qty": 3}),
        json.dumps({"batchref": "", "qty": 3}),
        json.dumps({"batchref": unknown, "qty": 3}),
    ]

    for data in bad:
        await stack.redis.publish("change_batch_quantity", data)
    await stack.redis.publish("change_batch_quantity", json.dumps({"batchref": ref, "qty": 7}))

    async def applied() -> bool:
        r = await stack.http.get(f"/batches/{ref}")
        return r.status_code == 200 and r.json()["purchased"] == 7

    await eventually(
        applied,
        DEADLINE,
        lambda: f"the valid message was not applied\n{stack.processes.report()}",
    )
    assert stack.worker.running, stack.processes.report()
    log = stack.worker.output()
    assert log.count("dead-lettering malformed change_batch_quantity message") == len(bad) - 1, log
    assert f"Unknown batch {unknown}" in log, log
    assert "could not apply" not in log, log
    # Each bad message is on the dead-letter list, as sent, in the order sent.
    kept = [json.loads(d) for d in await stack.redis.lrange(stack.dead_letter_key, 0, -1)]
    assert [d["message"] for d in kept] == bad, log
    assert [d["reason"] for d in kept] == ["malformed"] * (len(bad) - 1) + ["unknown_batch"]
    # The bad messages changed nothing.
    r = await stack.http.get(f"/batches/{ref}")
    assert (r.json()["purchased"], r.json()["allocated"]) == (7, 0)


async def test_sigterm_stops_the_worker_with_exit_code_0(stack: Stack) -> None:
    # Busy first: the worker has just applied a message when it is told to stop.
    sku, ref = random_ref("sku"), random_ref("batch")
    await add_batch(stack.http, ref, sku, 10, None)
    await stack.redis.publish("change_batch_quantity", json.dumps({"batchref": ref, "qty": 4}))

    async def applied() -> bool:
        r = await stack.http.get(f"/batches/{ref}")
        return r.status_code == 200 and r.json()["purchased"] == 4

    await eventually(applied, DEADLINE, stack.processes.report)

    started = time.monotonic()
    stack.worker.send(signal.SIGTERM)
    try:
        code = await stack.worker.wait(within=10)
    except TimeoutError:
        pytest.fail(f"the worker ignored SIGTERM for 10s\n{stack.processes.report()}")
    elapsed = time.monotonic() - started

    assert code == 0, stack.processes.report()
    assert elapsed < 5, f"{elapsed:.1f}s to stop\n{stack.processes.report()}"
    log = stack.worker.output()
    assert "worker stopped" in log, log
    assert "Traceback" not in log, log


async def test_sigterm_stops_an_idle_worker_and_sigint_too(
    module_database: str, redis_url: str, tmp_path: Path
) -> None:
    env = service_env(module_database, redis_url, relay_interval=0.2)
    async with Processes(tmp_path) as processes:
        for sig in (signal.SIGTERM, signal.SIGINT):
            worker = processes.worker(env, name=f"worker-{sig.name}")
            await worker.start_listening()
            started = time.monotonic()
            worker.send(sig)
            code = await worker.wait(within=10)
            assert code == 0, processes.report()
            assert time.monotonic() - started < 5, processes.report()
            assert "worker stopped" in worker.output(), processes.report()
