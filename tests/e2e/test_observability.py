"""What an operator sees: request ids, the request log, and /metrics."""

import asyncio
import logging
import re
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from app import metrics
from app.adapters import tables
from app.service_layer.gauges import GAUGE_INTERVAL
from tests.support.polling import eventually
from tests.support.processes import Api, Processes, dead_redis_url, service_env
from tests.support.refs import random_ref
from tests.support.scenarios import add_batch, allocate
from tests.support.servers import free_port


@pytest.fixture
def database_url(private_database: str) -> str:
    """A database of the test's own: on the session's shared one, another relay
    (the uvicorn fixture's) could deliver this test's events."""
    return private_database


async def test_a_request_id_is_made_up_and_echoed(client: httpx.AsyncClient) -> None:
    first = await client.get("/health")
    second = await client.get("/health")

    assert re.fullmatch(r"[0-9a-f]{32}", first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_a_callers_request_id_is_kept(client: httpx.AsyncClient) -> None:
    r = await client.get("/batches/nothing-here", headers={"X-Request-ID": "edge-7f3a:1"})

    assert r.status_code == 404
    assert r.headers["x-request-id"] == "edge-7f3a:1"


@pytest.mark.parametrize("given", ["has spaces in it", "x" * 129, 'quote"d', ""])
async def test_an_unusable_request_id_is_replaced(client: httpx.AsyncClient, given: str) -> None:
    r = await client.get("/health", headers={"X-Request-ID": given})

    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])


async def test_one_log_line_per_request_with_its_id(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.requests")
    ref = random_ref("batch")

    r = await client.get(f"/batches/{ref}", headers={"X-Request-ID": "req-one-line"})

    lines = [rec for rec in caplog.records if rec.name == "app.requests"]
    assert len(lines) == 1
    line = lines[0]
    assert (line.method, line.path, line.route, line.status) == (  # type: ignore[attr-defined, unused-ignore]
        "GET",
        f"/batches/{ref}",
        "/batches/{ref}",
        r.status_code,
    )
    assert line.duration_ms > 0  # type: ignore[attr-defined, unused-ignore]
    assert line.request_id == "req-one-line"  # type: ignore[attr-defined, unused-ignore]


async def test_the_request_id_follows_into_events_and_their_log_lines(
    client: httpx.AsyncClient, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    sku = random_ref("sku")
    await add_batch(client, random_ref("batch"), sku, 1)
    caplog.set_level(logging.INFO)

    r = await client.post(
        "/allocate",
        json={"orderid": random_ref("order"), "sku": sku, "qty": 5},
        headers={"X-Request-ID": "req-out-of-stock"},
    )

    assert r.status_code == 202

    # The out-of-stock notice is logged by an event handler after the commit,
    # from the outbox, under the request's id.
    def notices() -> list[logging.LogRecord]:
        return [rec for rec in caplog.records if "out of stock" in rec.getMessage()]

    # Within a relay pass or two, on a loaded machine too.
    await eventually(lambda: bool(notices()), 15, "the out-of-stock notice to be logged")
    assert [rec.request_id for rec in notices()] == ["req-out-of-stock"]  # type: ignore[attr-defined, unused-ignore]
    # And the event itself, in the outbox, names the request.
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            payloads = (
                await conn.execute(
                    select(tables.outbox.c.payload).where(tables.outbox.c.type == "OutOfStock")
                )
            ).scalars()
            ours = [p for p in payloads if p["sku"] == sku]
    finally:
        await engine.dispose()
    assert [p["request_id"] for p in ours] == ["req-out-of-stock"]


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus's text format (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "")
    match = re.search(rf"^{pattern} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_metrics_count_requests_allocations_and_out_of_stock(
    client: httpx.AsyncClient,
) -> None:
    before = (await client.get("/metrics")).text
    sku = random_ref("sku")
    await add_batch(client, random_ref("batch"), sku, 10)
    await allocate(client, random_ref("order"), sku, 4)
    await allocate(client, random_ref("order"), sku, 40)  # out of stock
    assert (await client.get(f"/products/{sku}")).status_code == 200

    # line_allocated goes out after the 202, from the outbox: wait until it has.
    published = {"handler": "publish_allocated_event"}
    count = "allocation_event_delivery_lag_seconds_count"
    answers: list[httpx.Response] = []

    async def delivered() -> bool:
        answers.append(await client.get("/metrics"))
        after = answers[-1].text
        done = sample(after, count, **published) - sample(before, count, **published)
        return done >= 1 and sample(after, "allocation_outbox_pending_events") == 0

    # The backlog gauge is read every GAUGE_INTERVAL: within a few of them.
    await eventually(delivered, 3 * GAUGE_INTERVAL, "line_allocated not delivered", interval=0.05)
    r = answers[-1]
    after = r.text

    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    allocate_202 = {"method": "POST", "route": "/allocate", "status": "202"}
    assert grew("http_requests_total", **allocate_202) == 2
    assert grew("http_request_duration_seconds_count", **allocate_202) == 2
    assert grew("http_requests_total", method="GET", route="/products/{sku}", status="200") == 1
    assert grew("allocation_lines_allocated_total") == 1
    assert grew("allocation_out_of_stock_total") == 1
    assert grew(count, **published) == 1
    # Every event was delivered within moments: the outbox holds nothing pending.
    assert sample(after, "allocation_outbox_pending_events") == 0
    assert sample(after, "allocation_outbox_oldest_pending_seconds") == 0
    assert sample(after, "allocation_outbox_oldest_delivered_seconds") >= 0
    assert "allocation_relay_failures_total" in after
    assert "allocation_outbox_prune_failures_total" in after


async def test_metrics_name_the_route_not_the_path(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        await client.get(f"/allocations/{random_ref('order')}")
    await client.get("/no/such/route")
    await client.head("/health")

    text = (await client.get("/metrics")).text

    assert 'route="/allocations/{orderid}",status="404"' in text
    assert 'route="unmatched",status="404"' in text
    assert 'method="HEAD",route="/health",status="200"' in text
    assert "order-" not in text


@pytest.mark.redis
@pytest.mark.slow
async def test_the_worker_serves_its_own_metrics(
    redis_url: str, tmp_path: Path, sqlite_url: str
) -> None:
    port = free_port()
    env = service_env(
        sqlite_url,
        redis_url,
        worker_port=port,
        dead_letter_key=random_ref("dead-letters"),
    )
    async with Processes(tmp_path) as processes, httpx.AsyncClient() as http:
        worker = processes.worker(env)
        await worker.start_listening()
        redis = Redis.from_url(redis_url)
        try:
            await redis.publish("change_batch_quantity", b"{not json")
        finally:
            await redis.aclose()

        async def counted() -> bool:
            try:  # the worker listens first, and serves its port once it is all up
                text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            except httpx.TransportError:
                return False
            return sample(text, "allocation_dead_letters_total", reason="malformed") >= 1

        await eventually(counted, 20, processes.report)

        ready = await http.get(f"http://127.0.0.1:{port}/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {
            "database": "ok",
            "redis": "ok",
            "nats": "off",
            "redis_pubsub": "ok",
            "redis_stream": "ok",
        }
        assert (await http.get(f"http://127.0.0.1:{port}/health")).json() == {"status": "ok"}


@pytest.mark.slow
async def test_the_worker_says_it_cannot_work_without_its_broker_and_its_gauges_are_true(
    tmp_path: Path, sqlite_url: str
) -> None:
    port = free_port()
    env = service_env(sqlite_url, dead_redis_url(), worker_port=port, relay_enabled=False)
    async with Processes(tmp_path) as processes, httpx.AsyncClient(timeout=5) as http:
        api = processes.api(env)
        await api.start_serving()
        sku = random_ref("sku")
        async with http_to(api) as client:
            await add_batch(client, random_ref("batch"), sku, 10)
        worker = processes.worker(env)
        worker.start()
        base = f"http://127.0.0.1:{port}"

        async def reports() -> bool:
            try:
                return (await http.get(f"{base}/health")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(reports, 30, processes.report)
        async with http_to(api) as client:
            await allocate(client, random_ref("order"), sku, 1)  # its event cannot go out

        async def backlog_shown() -> bool:
            text = (await http.get(f"{base}/metrics")).text
            return sample(text, "allocation_outbox_pending_events") >= 1

        await eventually(backlog_shown, 20, processes.report)
        ready = await http.get(f"{base}/ready")
        metrics_text = (await http.get(f"{base}/metrics")).text

    assert ready.status_code == 503, ready.text
    assert ready.json()["checks"]["database"] == "ok"
    assert ready.json()["checks"]["redis"].startswith("error")
    assert 'allocation_dependency_up{dependency="redis"} 0.0' in metrics_text


def http_to(api: Api) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=api.url, timeout=10)


@pytest.mark.slow
@pytest.mark.postgres
async def test_a_scrape_of_either_process_counts_what_every_process_did(
    uvicorn_url: str,
) -> None:
    # The session's allocation serve runs two processes, as compose does. Each
    # request on a connection of its own: the two processes take them in turn.
    async with httpx.AsyncClient(
        base_url=uvicorn_url, timeout=10, headers={"Connection": "close"}
    ) as client:

        async def scrape() -> str:
            return (await client.get("/metrics")).text

        # A scrape is at most RENDERED_FOR old: wait that long before each look.
        await asyncio.sleep(metrics.RENDERED_FOR)
        health = {"method": "GET", "route": "/health", "status": "200"}
        before = sample(await scrape(), "http_requests_total", **health)
        allocated_before = sample(await scrape(), "allocation_lines_allocated_total")
        for _ in range(20):
            assert (await client.get("/health")).status_code == 200
        sku = random_ref("sku")
        await add_batch(client, random_ref("batch"), sku, 10)
        await allocate(client, random_ref("order"), sku, 1)
        await asyncio.sleep(metrics.RENDERED_FOR)
        scrapes = [await scrape() for _ in range(6)]

    assert [sample(s, "http_requests_total", **health) - before for s in scrapes] == [20] * 6
    allocated = [sample(s, "allocation_lines_allocated_total") for s in scrapes]
    assert allocated == [allocated_before + 1] * 6
