"""Reads on a streaming replica: a client still reads its own writes, and reads survive it.

A PostgreSQL primary of the test's own and a streaming replica of it made
with ``pg_basebackup -R``, applying every commit ``APPLY_DELAY`` late
(``recovery_min_apply_delay``). The service runs as uvicorn with
``DATABASE_URL`` on the primary and ``READ_DATABASE_URL`` on the replica.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.databases import alembic_upgrade
from tests.support.otlp import receiving
from tests.support.polling import eventually
from tests.support.processes import Api, Processes, service_env
from tests.support.readme import HTTPX_EXAMPLE_PRINTS, httpx_example
from tests.support.refs import random_ref
from tests.support.servers import PostgresCluster, find_bindir, free_port, unavailable

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

APPLY_DELAY = 0.4  # seconds the replica applies each commit late
DB_TIMEOUT = 2.0  # the service's DB_TIMEOUT here
REPLICA_WAIT = 1.0  # how long a read with a position waits for the replica
TOKEN = "x-consistency-token"
POSITION = re.compile(r"[0-9A-F]+/[0-9A-F]+")


@pytest.fixture(scope="module")
def clusters() -> Iterator[tuple[PostgresCluster, PostgresCluster]]:
    bindir = find_bindir()
    if bindir is None:
        unavailable("PostgreSQL server binaries not found (apt-get install postgresql)")
    primary = PostgresCluster(bindir, free_port())
    replica: PostgresCluster | None = None
    try:
        primary.init(replication=True)
        primary.start()
        alembic_upgrade(primary.url)
        replica = primary.replica(free_port(), apply_delay=f"{round(APPLY_DELAY * 1000)}ms")
        replica.start()
        yield primary, replica
    finally:
        if replica is not None:
            replica.destroy()
        primary.destroy()


@pytest.fixture
def replica(clusters: tuple[PostgresCluster, PostgresCluster]) -> Iterator[PostgresCluster]:
    _, replica = clusters
    yield replica
    # Whatever a test did to it, the next one finds it running.
    if replica.frozen:
        replica.thaw()
    if not replica.running:
        replica.start()


@pytest.fixture
async def api(
    clusters: tuple[PostgresCluster, PostgresCluster], tmp_path: Path
) -> AsyncIterator[Api]:
    primary, replica = clusters
    env = service_env(
        primary.url,
        read_database_url=replica.url,
        db_timeout=DB_TIMEOUT,
        replica_wait=REPLICA_WAIT,
        replica_check_interval=0.2,
    )
    async with Processes(tmp_path) as processes:
        api = processes.api(env)
        await api.start_serving()
        yield api


@pytest.fixture
async def replica_http(api: Api) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
        yield client


async def add_batch(http: httpx.AsyncClient, qty: int = 100) -> tuple[str, str, httpx.Response]:
    ref, sku = random_ref("batch"), random_ref("sku")
    r = await http.post("/add_batch", json={"ref": ref, "sku": sku, "qty": qty, "eta": None})
    assert r.status_code == 201, r.text
    return ref, sku, r


def reads_from(metrics: str, source: str) -> float:
    match = re.search(rf'^allocation_reads_total{{source="{source}"}} (\S+)$', metrics, re.M)
    return float(match.group(1)) if match else 0.0


async def test_a_write_gives_its_position_in_location_and_a_header(
    replica_http: httpx.AsyncClient,
) -> None:
    ref, _, r = await add_batch(replica_http)
    position = r.headers[TOKEN]
    assert POSITION.fullmatch(position)
    assert r.headers["location"] == f"/batches/{ref}?after={position}"


async def test_a_replayed_write_gives_the_position_of_the_first(
    replica_http: httpx.AsyncClient,
) -> None:
    orderid = random_ref("order")
    _, sku, _ = await add_batch(replica_http)
    body, key = {"orderid": orderid, "sku": sku, "qty": 1}, {"Idempotency-Key": random_ref("k")}
    first = await replica_http.post("/allocate", json=body, headers=key)
    await add_batch(replica_http)  # the primary's log moves on
    again = await replica_http.post("/allocate", json=body, headers=key)

    assert again.headers["idempotent-replayed"] == "true"
    for header in ("location", "link", TOKEN):
        assert again.headers[header] == first.headers[header], header


async def test_plain_reads_go_to_the_replica_and_are_as_fresh_as_it_is(
    replica_http: httpx.AsyncClient,
) -> None:
    ref, _, _ = await add_batch(replica_http)
    assert (await replica_http.get(f"/batches/{ref}")).status_code == 404  # not applied yet
    await eventually(
        lambda: _answers(replica_http, f"/batches/{ref}", 200),
        APPLY_DELAY * 10,
        "replica never applied",
    )
    assert reads_from((await replica_http.get("/metrics")).text, "replica") > 0


async def _answers(http: httpx.AsyncClient, path: str, status: int) -> bool:
    return (await http.get(path)).status_code == status


async def test_following_location_reads_your_own_writes_despite_the_lag(
    replica_http: httpx.AsyncClient,
) -> None:
    waits = []

    async def follow(r: httpx.Response) -> httpx.Response:
        started = time.monotonic()
        answer = await replica_http.get(r.headers["location"])
        waits.append(time.monotonic() - started)
        return answer

    replica_reads = reads_from((await replica_http.get("/metrics")).text, "replica")
    ref, sku, created = await add_batch(replica_http, qty=20)
    batch = await follow(created)
    assert batch.status_code == 200
    assert batch.json()["purchased"] == 20

    orderid = random_ref("order")
    accepted = await replica_http.post("/allocate", json={"orderid": orderid, "sku": sku, "qty": 3})
    assert accepted.status_code == 202
    order = await follow(accepted)
    assert order.json()["lines"] == [{"sku": sku, "state": "allocated", "batchref": ref}]
    short = await replica_http.post(
        "/allocate", json={"orderid": random_ref("o"), "sku": sku, "qty": 50}
    )
    assert (await follow(short)).json()["lines"] == [
        {"sku": sku, "state": "out_of_stock", "batchref": None}
    ]

    changed = await replica_http.patch(f"/batches/{ref}", json={"qty": 12})
    assert changed.status_code == 202
    assert (await follow(changed)).json()["purchased"] == 12

    # A client building its own URL uses the header.
    position = accepted.headers[TOKEN]
    one = await replica_http.get(f"/allocations/{orderid}/{sku}", params={"after": position})
    assert one.json() == {"sku": sku, "batchref": ref}
    stock = await replica_http.get(f"/products/{sku}", params={"after": changed.headers[TOKEN]})
    assert stock.json()["available_now"] == 9

    print(f"replica applies {APPLY_DELAY}s late; longest Location read {max(waits):.3f}s")
    # The replica answered each, once it had caught up: it was waited for.
    assert reads_from((await replica_http.get("/metrics")).text, "replica") == replica_reads + 6
    assert APPLY_DELAY / 2 < max(waits) < REPLICA_WAIT + 0.5


async def test_the_readme_httpx_example_reads_back_through_the_lagging_replica(
    api: Api, tmp_path: Path
) -> None:
    code = httpx_example()
    script = tmp_path / "example.py"
    script.write_text(code.replace("http://127.0.0.1:8000", api.url))

    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == HTTPX_EXAMPLE_PRINTS


async def test_a_position_that_is_not_one_is_refused(replica_http: httpx.AsyncClient) -> None:
    r = await replica_http.get(f"/batches/{random_ref('batch')}", params={"after": "yesterday"})
    assert r.status_code == 422


async def test_reads_survive_a_stopped_replica_and_return_to_it(
    replica_http: httpx.AsyncClient, replica: PostgresCluster
) -> None:
    ref, _, _ = await add_batch(replica_http)
    replica.stop()
    answers = [(await replica_http.get(f"/batches/{ref}")).status_code for _ in range(20)]
    assert answers == [200] * 20  # from the primary

    ready = await replica_http.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"]["replica"].startswith("degraded")
    # Writes never touch the replica.
    _, _, created = await add_batch(replica_http)
    assert (await replica_http.get(created.headers["location"])).status_code == 200

    replica.start()
    await eventually(lambda: _replica_ok(replica_http), 15, "reads never went back to the replica")
    before = reads_from((await replica_http.get("/metrics")).text, "replica")
    await replica_http.get(f"/batches/{ref}")
    assert reads_from((await replica_http.get("/metrics")).text, "replica") > before


async def _replica_ok(http: httpx.AsyncClient) -> bool:
    replica: str = (await http.get("/ready")).json()["checks"]["replica"]
    return replica == "ok"


async def test_reads_survive_a_hanging_replica_within_db_timeout(
    replica_http: httpx.AsyncClient, replica: PostgresCluster
) -> None:
    ref, _, _ = await add_batch(replica_http)
    await asyncio.sleep(APPLY_DELAY * 3)  # on the replica too: a read could come from either
    replica.freeze()
    timings = []
    for _ in range(10):
        started = time.monotonic()
        r = await replica_http.get(f"/batches/{ref}")
        timings.append(time.monotonic() - started)
        assert r.status_code == 200
    assert max(timings) <= DB_TIMEOUT + 0.5, timings
    # Only the first waits on the replica; the rest go to the primary at once.
    assert sorted(timings)[-2] < 0.5, timings
    ready = await replica_http.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"]["replica"].startswith("degraded")

    # The checks that timed out meanwhile left the replica's pool whole.
    await asyncio.sleep(DB_TIMEOUT * 2)
    replica.thaw()
    await eventually(lambda: _replica_ok(replica_http), 15, "reads never went back to the replica")


async def test_metrics_show_the_replicas_lag(replica_http: httpx.AsyncClient) -> None:
    await add_batch(replica_http)

    async def lag_seen() -> bool:
        text = (await replica_http.get("/metrics")).text
        return re.search(r"^allocation_replica_lag_seconds \S+$", text, re.M) is not None

    await eventually(lag_seen, 10, "no replica lag in /metrics")
    assert "allocation_replica_up 1.0" in (await replica_http.get("/metrics")).text


async def test_a_traced_read_shows_its_statements_on_the_replica_and_a_write_on_the_primary(
    clusters: tuple[PostgresCluster, PostgresCluster], tmp_path: Path
) -> None:
    primary, replica = clusters
    with receiving() as receiver:
        env = service_env(primary.url, read_database_url=replica.url, replica_wait=REPLICA_WAIT)
        env.update(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_BSP_SCHEDULE_DELAY="100")
        async with Processes(tmp_path) as processes:
            api = processes.api(env)
            await api.start_serving()
            async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
                written, write_trace = "00-" + "a1" * 16 + "-" + "b2" * 8 + "-01", "a1" * 16
                ref, sku = random_ref("batch"), random_ref("sku")
                batch = {"ref": ref, "sku": sku, "qty": 5, "eta": None}
                created = await http.post(
                    "/add_batch", json=batch, headers={"traceparent": written}
                )
                read, read_trace = "00-" + "c3" * 16 + "-" + "d4" * 8 + "-01", "c3" * 16
                got = await http.get(created.headers["location"], headers={"traceparent": read})
                assert got.status_code == 200

            def ports(trace_id: str) -> set[object]:
                return {
                    s.attributes.get("server.port", s.attributes.get("net.peer.port"))
                    for s in receiver.of_trace(trace_id)
                    if s.kind == "client"
                }

            async def both_traced() -> bool:
                return replica.port in ports(read_trace) and primary.port in ports(write_trace)

            await eventually(both_traced, 15, lambda: f"{ports(read_trace)} {ports(write_trace)}")
    assert replica.port not in ports(write_trace)  # writes never touch the replica
