"""The soak: minutes of mixed load with Redis restarted under it (``make soak``).

Not in the default suite (it is marked ``soak``, which ``make test`` leaves
out). One uvicorn and one ``allocation worker`` share a fresh PostgreSQL
database and a redis-server of the test's own. Clients read, allocate, add
batches and change quantities over HTTP and over Redis for SOAK_SECONDS
(180 by default), while Redis is stopped for a few seconds every
REDIS_EVERY seconds and started again. Afterwards:

- no answer was a 5xx, outage or not (a Redis outage must not show);
- once the outbox is delivered, the views equal a rebuild from the write
  model, and no batch holds more than it has;
- the processes' memory after the soak is within 15% of that after warm-up.

The figures are printed and written to ``soak-report.json`` in the test's
temporary directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from tests.support.databases import query
from tests.support.outbox import outbox_pending
from tests.support.polling import eventually
from tests.support.processes import (
    Processes,
    Service,
    allocations_of,
    describe,
    run_cli,
    service_env,
)
from tests.support.refs import random_ref
from tests.support.scenarios import add_batch
from tests.support.servers import RedisServer

pytestmark = [pytest.mark.soak, pytest.mark.postgres, pytest.mark.redis]

SECONDS = float(os.environ.get("SOAK_SECONDS", "180"))
WARMUP = min(30.0, SECONDS / 6)
REDIS_EVERY, REDIS_DOWN = 40.0, 5.0
CLIENTS = 8
SKUS, BATCHES_PER_SKU, STOCK = 20, 3, 400
MEMORY_GROWTH_LIMIT = 1.15
SETTLE_TIMEOUT = 120.0


@dataclass
class Load:
    skus: dict[str, list[str]]
    outcomes: Counter[str] = field(default_factory=Counter)
    server_errors: list[tuple[float, str]] = field(default_factory=list)
    orders: set[str] = field(default_factory=set)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, kind: str, status: int | str) -> None:
        self.outcomes[f"{kind}:{status}"] += 1
        if isinstance(status, int) and status >= 500:
            self.server_errors.append((time.monotonic(), kind))


async def client(n: int, http: httpx.AsyncClient, redis: Redis, load: Load) -> None:
    rng = random.Random(n)
    mine: list[tuple[str, str]] = []  # (orderid, sku)
    while not load.stop.is_set():
        sku = rng.choice(list(load.skus))
        ref = rng.choice(load.skus[sku])
        roll = rng.random()
        try:
            if roll < 0.30 and mine:
                orderid, _ = rng.choice(mine)
                load.record("read", (await http.get(f"/allocations/{orderid}")).status_code)
            elif roll < 0.45:
                path = rng.choice([f"/batches/{ref}", f"/products/{sku}"])
                load.record("read", (await http.get(path)).status_code)
            elif roll < 0.80:
                orderid = random_ref(f"soak{n}")
                line = {"orderid": orderid, "sku": sku, "qty": rng.randint(1, 5)}
                load.record("allocate", (await http.post("/allocate", json=line)).status_code)
                mine.append((orderid, sku))
                load.orders.add(orderid)
            elif roll < 0.88:
                qty = rng.randint(STOCK // 4, STOCK)
                r = await http.patch(f"/batches/{ref}", json={"qty": qty})
                load.record("patch", r.status_code)
            elif roll < 0.95:
                qty = rng.randint(STOCK // 4, STOCK)
                message = json.dumps({"batchref": ref, "qty": qty})
                try:
                    await redis.publish("change_batch_quantity", message)
                    load.record("redis", "published")
                except Exception:  # Redis is down: the outage, not the service
                    load.record("redis", "down")
            else:
                new_ref = random_ref("soak-batch")
                batch = {"ref": new_ref, "sku": sku, "qty": STOCK, "eta": None}
                load.record("add_batch", (await http.post("/batches", json=batch)).status_code)
                load.skus[sku].append(new_ref)
        except httpx.TransportError:
            load.record("http", "transport")


async def restart_redis_now_and_then(server: RedisServer, load: Load, outages: list[float]) -> None:
    while not load.stop.is_set():
        try:
            await asyncio.wait_for(load.stop.wait(), REDIS_EVERY)
            return
        except TimeoutError:
            pass
        outages.append(time.monotonic())
        await server.stop()
        await asyncio.sleep(REDIS_DOWN)
        await server.start()


def rss_mb(service: Service) -> float:
    status = Path(f"/proc/{service.process.pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match, status
    return int(match.group(1)) / 1024


async def test_soak(private_database: str, redis_server: RedisServer, tmp_path: Path) -> None:
    env = service_env(private_database, redis_server.url, relay_interval=0.5)
    async with (
        Processes(tmp_path) as processes,
        httpx.AsyncClient(timeout=30) as http,
    ):
        api, worker = await processes.start_api_and_worker(env)
        http.base_url = httpx.URL(api.url)
        redis = Redis.from_url(redis_server.url, socket_timeout=2, socket_connect_timeout=1)
        try:
            skus: dict[str, list[str]] = {random_ref("soak-sku"): [] for _ in range(SKUS)}
            for sku, refs in skus.items():
                for _ in range(BATCHES_PER_SKU):
                    ref = random_ref("soak-batch")
                    await add_batch(http, ref, sku, STOCK, None)
                    refs.append(ref)
            load = Load(skus)
            outages: list[float] = []
            started = time.monotonic()
            tasks = [asyncio.create_task(client(n, http, redis, load)) for n in range(CLIENTS)]
            restarts = asyncio.create_task(restart_redis_now_and_then(redis_server, load, outages))
            try:
                await asyncio.sleep(WARMUP)
                early = {"api": rss_mb(api), "worker": rss_mb(worker)}
                await asyncio.sleep(SECONDS - WARMUP)
            finally:
                load.stop.set()
                results = await asyncio.gather(*tasks, restarts, return_exceptions=True)
            elapsed = time.monotonic() - started
            late = {"api": rss_mb(api), "worker": rss_mb(worker)}
            failures = [r for r in results if isinstance(r, BaseException)]
            assert not failures, f"{failures}\n{processes.report()}"
            assert api.running, processes.report()
            assert worker.running, processes.report()

            # -- settle: the worker reads Redis again, the outbox is delivered
            sentinel = random_ref("sentinel")
            await add_batch(http, sentinel, random_ref("sentinel-sku"), 1, None)

            async def sentinel_applied() -> bool:
                message = json.dumps({"batchref": sentinel, "qty": 9})
                await redis.publish("change_batch_quantity", message)
                r = await http.get(f"/batches/{sentinel}")
                return r.status_code == 200 and r.json()["purchased"] == 9

            await eventually(sentinel_applied, SETTLE_TIMEOUT, processes.report, interval=1.0)

            async def outbox_empty() -> bool:
                return await outbox_pending(private_database) == 0

            await eventually(outbox_empty, SETTLE_TIMEOUT, processes.report, interval=0.5)

            # -- the views equal a rebuild, and no batch is oversold
            orderids = sorted(load.orders)
            before = await allocations_of(http, orderids)
            result = await run_cli(env, "rebuild-views")
            assert result.returncode == 0, describe(result)
            after = await allocations_of(http, orderids)
            differ = [o for o in orderids if before[o] != after[o]]
            # A batch never holds more than it has, and its counter agrees
            # with the lines allocated to it.
            oversold = await query(
                private_database,
                "SELECT b.reference, b.purchased_quantity, b.allocated_quantity,"
                " coalesce(sum(l.qty), 0) FROM batches b"
                " LEFT JOIN allocations a ON a.batch_id = b.id"
                " LEFT JOIN order_lines l ON l.id = a.orderline_id"
                " GROUP BY b.id HAVING coalesce(sum(l.qty), 0) > b.purchased_quantity"
                " OR coalesce(sum(l.qty), 0) <> b.allocated_quantity",
            )
        finally:
            await redis.aclose()

    requests = sum(n for k, n in load.outcomes.items() if not k.startswith("redis:"))
    report = {
        "seconds": round(elapsed, 1),
        "requests": requests,
        "requests_per_second": round(requests / elapsed, 1),
        "outcomes": dict(sorted(load.outcomes.items())),
        "redis_outages": len(outages),
        "server_errors": len(load.server_errors),
        "orders": len(orderids),
        "views_differing_from_rebuild": len(differ),
        "oversold_batches": len(oversold),
        "rss_mb_after_warmup": {k: round(v, 1) for k, v in early.items()},
        "rss_mb_at_end": {k: round(v, 1) for k, v in late.items()},
    }
    (tmp_path / "soak-report.json").write_text(json.dumps(report, indent=2))
    print("\nsoak report:", json.dumps(report, indent=2))

    assert outages, "Redis was never restarted: the soak was too short"
    assert load.outcomes["redis:published"] > 0
    assert not load.server_errors, load.server_errors[:10]
    assert not differ, differ[:10]
    assert not oversold, oversold
    for name in early:
        growth = late[name] / early[name]
        assert growth <= MEMORY_GROWTH_LIMIT, f"{name}: {early[name]:.0f} -> {late[name]:.0f} MB"
