"""The database goes away and comes back: 503s at once, then service again, nothing lost.

A PostgreSQL server of the test's own (tests/support/servers.py) is shut down
fast, as in an outage: every session ends and new connections are refused.
Or it is frozen (SIGSTOP): connections hang, and only timeouts end a wait.
One uvicorn process serves on it, its relay on, with DB_TIMEOUT=2. Nothing
restarts the service: it has to notice the database is gone, say so, and
pick up again by itself.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.entrypoints.http import problems
from tests.support.databases import alembic_upgrade, query
from tests.support.outbox import outbox_pending
from tests.support.polling import eventually
from tests.support.processes import (
    Api,
    Processes,
    assert_no_drift,
    describe,
    run_cli,
    service_env,
    snapshot,
)
from tests.support.refs import random_ref
from tests.support.servers import PostgresCluster

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

DB_TIMEOUT = 2.0  # the service's DB_TIMEOUT here
MARGIN = 1.0  # seconds an answer may take beyond DB_TIMEOUT
READY_WITHIN = 1.0  # seconds from the outage to /ready's first 503
RECOVERY_WITHIN = 5.0  # seconds from the database's return to answers that succeed
OUTAGE = 3.0  # seconds the database stays away under load
CLIENTS = 6
SKUS = 3
UNAVAILABLE = problems.body(
    problems.DATABASE_UNAVAILABLE, "The database is unavailable; try again shortly"
)


@pytest.fixture
async def database(postgres_cluster: PostgresCluster) -> str:
    """The cluster's own database, migrated: nothing else uses the cluster."""
    await asyncio.to_thread(alembic_upgrade, postgres_cluster.url)
    return postgres_cluster.url


@pytest.fixture
async def api(database: str, tmp_path: Path) -> AsyncIterator[Api]:
    env = service_env(database, db_timeout=DB_TIMEOUT, relay_interval=0.2)
    async with Processes(tmp_path) as processes:
        api = processes.api(env)
        await api.start_serving()
        yield api


async def poll(
    http: httpx.AsyncClient, path: str, status: int, within: float
) -> tuple[httpx.Response, float]:
    """GET ``path`` every 100 ms until it answers ``status``: the answer, and when it came."""
    seen: Counter[int] = Counter()
    answered: list[tuple[httpx.Response, float]] = []

    async def answers() -> bool:
        r = await http.get(path)
        if r.status_code == status:
            answered.append((r, time.monotonic()))
            return True
        seen[r.status_code] += 1
        return False

    # The interval is the probe's period, not a wait for a state.
    await eventually(
        answers, within, lambda: f"no {status} from {path}: {dict(seen)}", interval=0.1
    )
    return answered[0]


async def test_ready_answers_503_within_a_second_of_the_database_going_and_200_once_back(
    api: Api, postgres_cluster: PostgresCluster
) -> None:
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
        assert (await http.get("/ready")).status_code == 200

        await asyncio.to_thread(postgres_cluster.stop)
        gone = time.monotonic()
        r, answered = await poll(http, "/ready", 503, within=READY_WITHIN + 2)
        assert answered - gone <= READY_WITHIN, f"first 503 after {answered - gone:.2f}s"
        assert "database" in r.json()["message"], r.text
        assert r.json()["checks"]["database"] != "ok", r.text
        for _ in range(5):  # and it stays so while the database is away
            assert (await http.get("/ready")).status_code == 503
            assert (await http.get("/health")).status_code == 200

        await asyncio.to_thread(postgres_cluster.start)
        back = time.monotonic()
        r, answered = await poll(http, "/ready", 200, within=RECOVERY_WITHIN)
        assert answered - back <= RECOVERY_WITHIN
        assert r.json()["checks"]["database"] == "ok"
        assert r.json()["checks"]["replica"] == "off"
    assert api.running, api.report()


async def test_a_database_that_hangs_answers_503_within_db_timeout_then_serves_again(
    api: Api, postgres_cluster: PostgresCluster
) -> None:
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
        sku, ref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
        r = await http.post("/add_batch", json={"ref": ref, "sku": sku, "qty": 100, "eta": None})
        assert r.status_code == 201, r.text
        r = await http.post("/allocate", json={"orderid": orderid, "sku": sku, "qty": 1})
        assert r.status_code == 202, r.text
        # Connections in both pools, open and idle, when the server stops answering.
        reads = [f"/batches/{ref}", f"/products/{sku}", f"/allocations/{orderid}"] * 3
        assert {(await http.get(path)).status_code for path in reads} == {200}

        def requests() -> list[tuple[str, str, Any]]:
            line = {"orderid": random_ref("order"), "sku": sku, "qty": 1}
            batch = {"ref": random_ref("batch"), "sku": sku, "qty": 5, "eta": None}
            return [
                ("POST", "/allocate", line),
                ("POST", "/add_batch", batch),
                ("PATCH", f"/batches/{ref}", {"qty": 90}),
                *(("GET", path, None) for path in reads),
            ]

        async def timed(method: str, path: str, body: Any) -> tuple[str, int, float, Any]:
            started = time.monotonic()
            r = await http.request(method, path, json=body)
            return path, r.status_code, time.monotonic() - started, r.json()

        await asyncio.to_thread(postgres_cluster.freeze)
        hung = time.monotonic()
        r, answered = await poll(http, "/ready", 503, within=5)
        assert answered - hung <= READY_WITHIN + 0.5, f"first 503 after {answered - hung:.2f}s"
        assert "database" in r.json()["message"], r.text
        for _ in range(2):  # the second round meets the pools as the first left them
            answers = await asyncio.gather(*(timed(*request) for request in requests()))
            for path, status, took, body in answers:
                assert (status, body) == (503, UNAVAILABLE), (path, status, body)
                assert took <= DB_TIMEOUT + MARGIN, f"{path} took {took:.2f}s"

        await asyncio.to_thread(postgres_cluster.thaw)
        await poll(http, "/ready", 200, within=RECOVERY_WITHIN)
        answers = await asyncio.gather(*(timed(*request) for request in requests()))
        assert {status for _, status, _, _ in answers} <= {200, 201, 202}, answers
    log = api.output()
    assert "Traceback" not in log, api.report()
    assert log.count("database available again after") == 1, api.report()


# -- under load --------------------------------------------------------------


@dataclass
class Answer:
    kind: str  # add_batch, allocate, get_batch, get_allocations, get_product
    key: str  # the batch ref, order id or sku it is about
    started: float
    ended: float
    status: int | None  # None: the connection failed
    retry_after: str | None = None
    body: Any = None

    @property
    def took(self) -> float:
        return self.ended - self.started


@dataclass
class Load:
    skus: list[str]
    batches: dict[str, tuple[str, int]] = field(default_factory=dict)  # ref -> (sku, qty)
    orders: dict[str, tuple[str, int]] = field(default_factory=dict)  # orderid -> (sku, qty)
    created: list[str] = field(default_factory=list)  # refs answered 201
    placed: list[str] = field(default_factory=list)  # order ids answered 202
    answers: list[Answer] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def succeeded(self, after: float = 0.0) -> int:
        return sum(a.status in (200, 201, 202) and a.started >= after for a in self.answers)

    def outcomes(self) -> Counter[str]:
        return Counter(f"{a.kind}:{a.status}" for a in self.answers)


async def client(n: int, http: httpx.AsyncClient, load: Load) -> None:
    """Writes and reads in a loop, as fast as answers come; every answer recorded."""
    rng = random.Random(n)

    async def send(kind: str, key: str, method: str, url: str, body: Any = None) -> None:
        started = time.monotonic()
        try:
            r = await http.request(method, url, json=body)
        except httpx.TransportError:
            load.answers.append(Answer(kind, key, started, time.monotonic(), None))
            return
        answer = Answer(kind, key, started, time.monotonic(), r.status_code)
        answer.retry_after = r.headers.get("Retry-After")
        json = r.headers.get("content-type") in ("application/json", problems.MEDIA_TYPE)
        answer.body = r.json() if json else r.text
        load.answers.append(answer)
        if r.status_code == 201:
            load.created.append(key)
        elif r.status_code == 202:
            load.placed.append(key)

    while not load.stop.is_set():
        roll = rng.random()
        sku = rng.choice(load.skus)
        if roll < 0.2:
            ref, qty = random_ref(f"batch{n}"), rng.randint(100, 1000)
            load.batches[ref] = (sku, qty)
            body = {"ref": ref, "sku": sku, "qty": qty, "eta": None}
            await send("add_batch", ref, "POST", "/add_batch", body)
        elif roll < 0.5:
            orderid, qty = random_ref(f"order{n}"), rng.randint(1, 3)
            load.orders[orderid] = (sku, qty)
            body = {"orderid": orderid, "sku": sku, "qty": qty}
            await send("allocate", orderid, "POST", "/allocate", body)
        elif roll < 0.7:
            ref = rng.choice(load.created)
            await send("get_batch", ref, "GET", f"/batches/{ref}")
        elif roll < 0.9 and load.placed:
            orderid = rng.choice(load.placed)
            await send("get_allocations", orderid, "GET", f"/allocations/{orderid}")
        else:
            await send("get_product", sku, "GET", f"/products/{sku}")


async def test_an_outage_under_load_answers_503_fast_and_loses_nothing_acknowledged(
    api: Api, database: str, postgres_cluster: PostgresCluster
) -> None:
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
        # Stock enough that no order runs out: every allocation answered 202 is allocated.
        load = Load([random_ref("sku") for _ in range(SKUS)])
        for sku in load.skus:
            ref = random_ref("stock")
            r = await http.post(
                "/add_batch", json={"ref": ref, "sku": sku, "qty": 1_000_000, "eta": None}
            )
            assert r.status_code == 201, r.text
            load.batches[ref] = (sku, 1_000_000)
            load.created.append(ref)

        clients = [asyncio.create_task(client(n, http, load)) for n in range(CLIENTS)]
        try:
            await eventually(lambda: load.succeeded() >= 60, 30, lambda: str(load.outcomes()))

            await asyncio.to_thread(postgres_cluster.stop)
            gone = time.monotonic()

            def outage_served() -> bool:
                refused = sum(a.status == 503 and a.started >= gone for a in load.answers)
                return refused >= 30 and time.monotonic() - gone >= OUTAGE

            await eventually(outage_served, OUTAGE + 10, lambda: str(load.outcomes()))

            starting = time.monotonic()
            await asyncio.to_thread(postgres_cluster.start)
            back = time.monotonic()

            def serving_again() -> bool:
                after = [a for a in load.answers if a.started >= back and a.status is not None]
                writes = any(a.status in (201, 202) for a in after)
                reads = any(a.status == 200 for a in after)
                return writes and reads

            await eventually(serving_again, RECOVERY_WITHIN, lambda: str(load.outcomes()))
            recovered = time.monotonic()

            def served_after() -> bool:
                # long enough to see that no 503 comes once recovered
                settled = time.monotonic() > back + RECOVERY_WITHIN + 1
                return settled and load.succeeded(after=recovered) >= 60

            await eventually(served_after, 30, lambda: str(load.outcomes()))
        finally:
            load.stop.set()
            results = await asyncio.gather(*clients, return_exceptions=True)
        assert not [r for r in results if isinstance(r, BaseException)], results
        outcomes = load.outcomes()

        # -- every answer was on time, and either a success or a 503 that says when to retry
        assert not [a for a in load.answers if a.status is None], outcomes
        slow = [a for a in load.answers if a.took > DB_TIMEOUT + MARGIN]
        assert not slow, f"answers slower than DB_TIMEOUT + {MARGIN}s: {slow[:5]}"
        for a in load.answers:
            if a.status == 503:
                assert a.body == UNAVAILABLE, a
                assert a.retry_after is not None, a
                assert 1 <= int(a.retry_after) <= 5, a
            elif a.status == 404:
                # An allocation made at the edge of the outage reaches its
                # projection once the relay delivers its event.
                assert a.kind == "get_allocations", a
            else:
                assert a.status in (200, 201, 202), a

        # -- while the database was away, everything answered 503
        during = [a for a in load.answers if a.started >= gone and a.ended <= starting]
        assert {a.kind for a in during} >= {"add_batch", "allocate", "get_batch"}, outcomes
        assert {a.status for a in during} == {503}, Counter(a.status for a in during)
        # ... and soon after it came back, nothing did
        later = [a for a in load.answers if a.started >= back + RECOVERY_WITHIN]
        assert later, outcomes
        assert 503 not in {a.status for a in later}, outcomes
        assert recovered - back <= RECOVERY_WITHIN

        # -- the relay delivers what the outage left pending
        await eventually(
            lambda: _outbox_empty(database), 30, lambda: f"outbox not delivered\n{api.report()}"
        )

        # -- nothing acknowledged is lost: each 201 batch and 202 allocation is there
        assert load.created, outcomes
        assert load.placed, outcomes
        for ref in load.created:
            r = await http.get(f"/batches/{ref}")
            assert r.status_code == 200, (ref, r.text)
            assert (r.json()["sku"], r.json()["purchased"]) == load.batches[ref]
        held = {
            orderid: (sku, ref)
            for orderid, sku, ref in await query(
                database,
                "SELECT l.orderid, l.sku, b.reference FROM order_lines l"
                " JOIN allocations a ON a.orderline_id = l.id"
                " JOIN batches b ON b.id = a.batch_id",
            )
        }
        for orderid in load.placed:
            assert orderid in held, f"{orderid} answered 202 but is not allocated"
            sku, ref = held[orderid]
            assert sku == load.orders[orderid][0]
            r = await http.get(f"/allocations/{orderid}")
            assert (r.status_code, r.json()) == (200, [{"sku": sku, "batchref": ref}]), orderid

        # -- and the read model is what a rebuild from the write model makes of it
        paths = [f"/allocations/{o}" for o in sorted(load.orders)]
        paths += [f"/batches/{ref}" for ref in sorted(load.batches)]
        paths += [f"/products/{sku}" for sku in load.skus]
        before = await snapshot(http, paths)
        result = await run_cli(api.env, "rebuild-views")
        assert result.returncode == 0, describe(result)
        after = await snapshot(http, paths)
        changed = {p: (before[p], after[p]) for p in paths if before[p] != after[p]}
        assert not changed, f"the views differ from a rebuild: {changed}"
        await assert_no_drift(api.env)

    # -- the process said what happened: one line when the outage began, one when it
    # ended, each 503 on its request's own line; and its relay lived through it
    log = api.output()
    refused = outcomes_total(outcomes, 503)
    assert log.count('"status":503') == refused, api.report()
    assert "Traceback" not in log, api.report()
    assert log.count("database unavailable (") == 1, api.report()
    assert log.count("database available again after") == 1, api.report()
    assert api.running, api.report()
    await api.shut_down()


async def _outbox_empty(database: str) -> bool:
    return await outbox_pending(database) == 0


def outcomes_total(outcomes: Counter[str], status: int) -> int:
    return sum(n for key, n in outcomes.items() if key.endswith(f":{status}"))
