"""The kill test: SIGKILL the API under load, restart it, and lose nothing.

One uvicorn process (its relay on) and one ``allocation worker`` share a
fresh database. Four clients allocate orders over a few skus with little
stock, and change batch quantities over HTTP and over Redis. Half-way, the
API is killed and restarted on the same port. Within 5 s of the restart,
every event the dead process had committed is delivered; once the load is
over, every order reads the same before and after ``allocation
rebuild-views``, every ``line_allocated`` has been published, and the write
model adds up.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from tests.support.databases import query
from tests.support.outbox import outbox_pending
from tests.support.polling import eventually
from tests.support.processes import (
    Processes,
    allocations_of,
    assert_no_drift,
    describe,
    run_cli,
    service_env,
)
from tests.support.redis import Subscriber
from tests.support.refs import random_ref
from tests.support.scenarios import add_batch

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

CLIENTS = 4
MAX_OPS = 250  # per client: a bound on the load whatever happens
PHASE_OPS = 60  # successful operations before the kill, and again after the restart
PHASE_TIMEOUT = 30.0
SETTLE_TIMEOUT = 60.0
OWED_WITHIN = 5.0  # seconds after the restart: what the dead process owed is delivered
SKUS = 3
BATCHES = 3  # per sku: one in the warehouse, two shipments
STOCK = 12  # units per batch at the start: orders run out


@dataclass
class Op:
    kind: str
    started: float
    ended: float = 0.0
    outcome: str = ""  # an HTTP status, "transport" or "published"


@dataclass
class Load:
    """What the clients did: every order line they asked for, every operation."""

    batches: dict[str, list[str]]  # sku -> batch refs
    orders: dict[str, dict[str, int]] = field(default_factory=dict)  # orderid -> sku -> qty
    ops: list[Op] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def succeeded(self) -> int:
        return sum(op.outcome in ("202", "published") for op in self.ops)

    def outcomes(self) -> Counter[str]:
        return Counter(f"{op.kind}:{op.outcome}" for op in self.ops)


async def client(n: int, http: httpx.AsyncClient, redis: Redis, load: Load) -> None:
    rng = random.Random(n)
    refs = [ref for refs in load.batches.values() for ref in refs]

    async def request(kind: str, method: str, url: str, body: dict[str, Any]) -> str:
        """Send, retrying a little after a transport error or a collision."""
        outcome = ""
        for attempt in range(3):
            op = Op(kind, time.monotonic())
            load.ops.append(op)
            try:
                r = await http.request(method, url, json=body)
                outcome = str(r.status_code)
            except httpx.TransportError:
                outcome = "transport"
            op.ended, op.outcome = time.monotonic(), outcome
            if outcome not in ("transport", "409") or load.stop.is_set():
                return outcome
            await asyncio.sleep(0.05 * 2**attempt)  # client backoff, not a wait for state
        return outcome

    for _ in range(MAX_OPS):
        if load.stop.is_set():
            return
        roll = rng.random()
        if roll < 0.6:
            orderid = random_ref(f"order{n}")
            lines = {sku: rng.randint(1, 4) for sku in rng.sample(sorted(load.batches), 2)}
            if rng.random() < 0.5:
                lines.popitem()
            load.orders[orderid] = lines
            for sku, qty in lines.items():
                body = {"orderid": orderid, "sku": sku, "qty": qty}
                await request("allocate", "POST", "/allocate", body)
        elif roll < 0.8:
            ref, qty = rng.choice(refs), rng.randint(0, 2 * STOCK)
            await request("patch", "PATCH", f"/batches/{ref}", {"qty": qty})
        else:
            ref, qty = rng.choice(refs), rng.randint(0, 2 * STOCK)
            op = Op("redis", time.monotonic())
            load.ops.append(op)
            await redis.publish("change_batch_quantity", json.dumps({"batchref": ref, "qty": qty}))
            op.ended, op.outcome = time.monotonic(), "published"


async def test_killing_the_api_under_load_loses_nothing(
    private_database: str, redis_url: str, tmp_path: Path
) -> None:
    env = service_env(private_database, redis_url, relay_interval=0.2)
    async with (
        Processes(tmp_path) as processes,
        httpx.AsyncClient(timeout=10) as http,
        Subscriber(redis_url, "line_allocated") as line_allocated,
    ):
        api, worker = await processes.start_api_and_worker(env)
        http.base_url = httpx.URL(api.url)
        redis = Redis.from_url(redis_url)
        try:
            # -- stock: a few skus, each in the warehouse and on two ships
            today = date.today()
            etas = [None, *(str(today + timedelta(days=d)) for d in (10, 20))]
            batches = {random_ref("sku"): [random_ref("batch") for _ in etas] for _ in range(SKUS)}
            for sku, refs in batches.items():
                for ref, eta in zip(refs, etas, strict=True):
                    await add_batch(http, ref, sku, STOCK, eta)
            sentinel = random_ref("sentinel")
            await add_batch(http, sentinel, random_ref("sentinel-sku"), 1, None)

            # -- load; kill the API mid-way; restart it; load again
            load = Load(batches)
            clients = [asyncio.create_task(client(n, http, redis, load)) for n in range(CLIENTS)]
            try:
                await eventually(
                    lambda: load.succeeded() >= PHASE_OPS or all(c.done() for c in clients),
                    PHASE_TIMEOUT,
                    lambda: f"load too slow: {load.outcomes()}\n{processes.report()}",
                )
                killed_at = time.monotonic()
                code = await api.kill()
                assert code == -signal.SIGKILL
                committed_before_kill = await query(
                    private_database, "SELECT id FROM outbox WHERE completed_at IS NULL"
                )
                before_kill = load.succeeded()
                await api.start_serving()
                restarted_at = time.monotonic()

                # What the dead process had stored and not delivered (some of it
                # claimed by its relay when it died) goes out at once: its locks
                # died with it.
                owed = {event_id for (event_id,) in committed_before_kill}

                async def owed_delivered() -> bool:
                    rows = await query(
                        private_database, "SELECT id FROM outbox WHERE completed_at IS NULL"
                    )
                    return not owed & {event_id for (event_id,) in rows}

                await eventually(
                    owed_delivered,
                    OWED_WITHIN,
                    lambda: (
                        f"events owed at the kill not delivered within {OWED_WITHIN}s of "
                        f"the restart\n{processes.report()}"
                    ),
                )
                await eventually(
                    lambda: (
                        load.succeeded() >= before_kill + PHASE_OPS
                        or all(c.done() for c in clients)
                    ),
                    PHASE_TIMEOUT,
                    lambda: (
                        f"load too slow after restart: {load.outcomes()}\n" + processes.report()
                    ),
                )
            finally:
                load.stop.set()
                results = await asyncio.gather(*clients, return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            assert not errors, f"{errors}\n{processes.report()}"

            # -- the kill really happened under load
            outcomes = load.outcomes()
            done_before = [op for op in load.ops if op.outcome != "transport" and op.ended]
            assert any(op.ended < killed_at for op in done_before), outcomes
            assert any(op.started > restarted_at and op.kind != "redis" for op in done_before), (
                outcomes
            )
            cut = [op for op in load.ops if op.started <= killed_at < (op.ended or killed_at + 1)]
            transport_errors = sum(op.outcome == "transport" for op in load.ops)
            assert cut or transport_errors, f"nothing was in flight at the kill: {outcomes}"
            unexpected = {
                k: n
                for k, n in outcomes.items()
                if k not in ("allocate:202", "patch:202", "redis:published")
                and not k.endswith(":transport")
                and not k.endswith(":409")
            }
            assert not unexpected, f"{outcomes}\n{processes.report()}"
            assert api.running, processes.report()
            assert worker.running, processes.report()

            # -- settle: the worker has read every message, the outbox is empty
            await redis.publish(
                "change_batch_quantity", json.dumps({"batchref": sentinel, "qty": 9})
            )

            async def sentinel_applied() -> bool:
                r = await http.get(f"/batches/{sentinel}")
                return r.status_code == 200 and r.json()["purchased"] == 9

            await eventually(sentinel_applied, SETTLE_TIMEOUT, processes.report)

            async def outbox_empty() -> bool:
                return await outbox_pending(private_database) == 0

            await eventually(
                outbox_empty,
                SETTLE_TIMEOUT,
                lambda: f"outbox not delivered\n{processes.report()}",
                interval=0.25,
            )
            result = await run_cli(env, "outbox")
            assert result.returncode == 0, describe(result)
            assert result.stdout.splitlines()[0] == "pending: 0", describe(result)

            # -- every order reads the same before and after rebuilding the views
            orderids = sorted(load.orders)
            before = await allocations_of(http, orderids)
            result = await run_cli(env, "rebuild-views")
            assert result.returncode == 0, describe(result)
            assert result.stdout.strip() == "views rebuilt", describe(result)
            assert re.search(r"^allocations_view: (\d+)/\1 rows$", result.stderr, re.M), describe(
                result
            )
            after = await allocations_of(http, orderids)
            changed = {o: (before[o], after[o]) for o in orderids if before[o] != after[o]}
            assert not changed, f"views differ from the write model: {changed}"
            await assert_no_drift(env)

            # -- and they read what the write model holds
            held: dict[str, list[dict[str, str]]] = {}
            for orderid, sku, ref in await query(
                private_database,
                "SELECT l.orderid, l.sku, b.reference FROM order_lines l"
                " JOIN allocations a ON a.orderline_id = l.id"
                " JOIN batches b ON b.id = a.batch_id",
            ):
                held.setdefault(orderid, []).append({"sku": sku, "batchref": ref})
            statuses: Counter[int] = Counter()
            for orderid in orderids:
                status, body = after[orderid]
                statuses[status] += 1
                expected = sorted(held.get(orderid, []), key=lambda line: line["sku"])
                if expected:
                    assert (status, body) == (200, expected), orderid
                else:
                    assert status == 404, (orderid, body)
                skus = [line["sku"] for line in body] if status == 200 else []
                assert len(skus) == len(set(skus)), f"{orderid} holds a sku twice: {body}"
                assert set(skus) <= set(load.orders[orderid]), (orderid, body)
            # Limited stock: some orders got everything, some ran out.
            assert statuses[200], statuses
            assert statuses[404], statuses

            # -- the write model adds up, and the batches' view shows it
            rows = await query(
                private_database,
                "SELECT b.reference, b.purchased_quantity, b.allocated_quantity,"
                " coalesce(sum(l.qty), 0) AS lines"
                " FROM batches b LEFT JOIN allocations a ON a.batch_id = b.id"
                " LEFT JOIN order_lines l ON l.id = a.orderline_id"
                " GROUP BY b.id, b.reference, b.purchased_quantity, b.allocated_quantity",
            )
            assert len(rows) == SKUS * BATCHES + 1
            for ref, purchased, allocated, lines in rows:
                assert allocated == lines, f"batch {ref}: allocated {allocated}, lines {lines}"
                assert 0 <= allocated <= purchased, f"batch {ref}: {allocated}/{purchased}"
                r = await http.get(f"/batches/{ref}")
                assert (r.json()["purchased"], r.json()["allocated"]) == (purchased, allocated)
            lines_per_order = await query(
                private_database,
                "SELECT orderid, sku, count(*) FROM order_lines GROUP BY orderid, sku"
                " HAVING count(*) > 1",
            )
            assert not lines_per_order, lines_per_order
            # Every line_allocated went out, each once or recognisably the same twice.
            allocated = {
                event_id
                for (event_id,) in await query(
                    private_database, "SELECT id FROM outbox WHERE type = 'Allocated'"
                )
            }
            sentinel_change = random_ref("sentinel")
            await redis.publish("line_allocated", json.dumps({"event_id": sentinel_change}))
            await eventually(
                lambda: any(m.get("event_id") == sentinel_change for m in line_allocated.messages),
                SETTLE_TIMEOUT,
                "the subscriber to catch up",
            )
            published = {m.get("event_id") for m in line_allocated.messages}
            missing = allocated - published
            assert not missing, f"{len(missing)} of {len(allocated)} line_allocated never published"
            # No message was dropped, no handler failed for good along the way.
            for service in (api, worker):
                assert "Traceback" not in service.output(), processes.report()
            assert "could not apply" not in worker.output(), processes.report()
        finally:
            await redis.aclose()
