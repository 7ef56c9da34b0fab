"""One trace across the hop: an API and a worker exporting to a real OTLP/HTTP receiver.

The processes are started with the standard variables alone
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_SERVICE_NAME``), on PostgreSQL and a
Redis of the test's own. A request with a W3C ``traceparent`` must give that
trace's spans from the server, its statements and the publish of its event;
a message with one, the worker's spans in that trace.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from tests.support.otlp import Receiver, Span, receiving
from tests.support.polling import eventually
from tests.support.processes import Api, Processes, Worker, json_lines, service_env
from tests.support.redis import Subscriber
from tests.support.refs import random_ref
from tests.support.servers import RedisServer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@dataclass
class Traced:
    receiver: Receiver
    api: Api
    worker: Worker
    redis: Redis
    redis_url: str
    processes: Processes


def traceparent() -> tuple[str, str, str]:
    """A new trace as a caller starts it: (traceparent, trace id, span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


@pytest.fixture
async def traced(
    private_database: str, redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[Traced]:
    with receiving() as receiver:
        env = service_env(private_database, redis_server.url, relay_interval=0.2)
        env.update(
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_BSP_SCHEDULE_DELAY="100",  # milliseconds between exports
            LOG_FORMAT="json",
        )
        async with Processes(tmp_path) as processes, Redis.from_url(redis_server.url) as redis:
            api = processes.api({**env, "OTEL_SERVICE_NAME": "allocation-api"})
            worker = processes.worker({**env, "OTEL_SERVICE_NAME": "allocation-worker"})
            api.start()
            worker.start()
            await api.serving()
            await worker.listening()
            await worker.reading()
            yield Traced(receiver, api, worker, redis, redis_server.url, processes)


async def spans_of(
    traced: Traced, trace_id: str, wanted: Callable[[list[Span]], bool], what: str
) -> list[Span]:
    """The spans of ``trace_id`` once the ones ``wanted`` are in (they come in batches)."""

    async def enough() -> bool:
        return wanted(traced.receiver.of_trace(trace_id))

    await eventually(enough, 15, lambda: f"{what}: {traced.receiver.of_trace(trace_id)}")
    return traced.receiver.of_trace(trace_id)


async def test_a_request_is_one_trace_through_its_sql_and_the_publish_of_its_event(
    traced: Traced,
) -> None:
    sku, ref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    header, trace_id, caller = traceparent()
    async with (
        httpx.AsyncClient(base_url=traced.api.url, timeout=10) as http,
        Subscriber(traced.redis_url, "line_allocated") as line_allocated,
    ):
        batch = {"ref": ref, "sku": sku, "qty": 10, "eta": None}
        assert (await http.post("/batches", json=batch)).status_code == 201
        line = {"orderid": orderid, "sku": sku, "qty": 2}
        r = await http.post("/allocate", json=line, headers={"traceparent": header})
        assert r.status_code == 202, r.text

        async def published() -> bool:
            return any(m["orderid"] == orderid for m in await line_allocated.received())

        await eventually(published, 10, traced.processes.report)
        message = next(m for m in line_allocated.messages if m["orderid"] == orderid)

    def statement(span: Span) -> str:
        return str(span.attributes.get("db.statement", ""))

    def complete(spans: list[Span]) -> bool:
        kinds = {s.kind for s in spans}
        inserts = any("INSERT INTO order_lines" in statement(s) for s in spans)
        return {"server", "producer"} <= kinds and inserts

    spans = await spans_of(traced, trace_id, complete, "the allocation's spans")
    [server] = [s for s in spans if s.kind == "server"]
    assert server.service == "allocation-api"
    assert server.parent_id == caller  # the caller's span is its parent
    assert server.attributes["http.route"] == "/allocate"
    statements = [s for s in spans if s.kind == "client" and "db.system" in str(s.attributes)]
    assert any("FOR UPDATE" in statement(s) for s in statements), spans
    # The line goes in with the allocation's other writes, in one statement.
    assert any("INSERT INTO order_lines" in statement(s) for s in statements), spans
    [publish] = [s for s in spans if s.kind == "producer"]
    assert publish.name == "publish line_allocated"
    assert publish.attributes["messaging.destination.name"] == "line_allocated"
    assert publish.attributes["messaging.message.id"] == message["event_id"]
    # The Redis commands of the publish are its children; the message carries its context.
    assert [s for s in spans if s.parent_id == publish.span_id and s.kind == "client"]
    assert message["traceparent"] == f"00-{trace_id}-{publish.span_id}-01"
    # The request's log line carries the trace.
    [logged] = [r for r in json_lines(traced.api.output()) if r.get("path") == "/allocate"]
    assert (logged["trace_id"], logged["span_id"]) == (trace_id, server.span_id)


async def test_a_message_with_a_traceparent_is_handled_in_its_trace(traced: Traced) -> None:
    sku, ref = random_ref("sku"), random_ref("batch")
    async with httpx.AsyncClient(base_url=traced.api.url, timeout=10) as http:
        batch = {"ref": ref, "sku": sku, "qty": 10, "eta": None}
        assert (await http.post("/batches", json=batch)).status_code == 201

    async def by_stream(qty: int, header: str) -> None:
        fields = {"batchref": ref, "qty": str(qty), "traceparent": header}
        await traced.redis.xadd("change_batch_quantity", fields)  # type: ignore[arg-type, unused-ignore]

    async def by_channel(qty: int, header: str) -> None:
        message = {"batchref": ref, "qty": qty, "traceparent": header}
        await traced.redis.publish("change_batch_quantity", json.dumps(message))

    # One after the other: a change that arrives after a newer one is stale,
    # and changes nothing ("An older change never overwrites a newer one",
    # docs/architecture.md).
    for send, qty, source in (
        (by_stream, 7, "change_batch_quantity stream"),
        (by_channel, 8, "change_batch_quantity channel"),
    ):
        header, trace_id, sender = traceparent()
        await send(qty, header)

        async def changed(trace_id: str = trace_id) -> bool:
            spans = traced.receiver.of_trace(trace_id)
            return any(s.kind == "consumer" for s in spans) and any(
                "UPDATE batches" in str(s.attributes.get("db.statement")) for s in spans
            )

        def describe(source: str = source) -> str:
            return f"the worker's spans for the {source}: {traced.worker.report()}"

        await eventually(changed, 15, describe)
        spans = traced.receiver.of_trace(trace_id)
        [process] = [s for s in spans if s.kind == "consumer"]
        assert process.service == "allocation-worker"
        assert process.name == "process change_batch_quantity"
        assert process.parent_id == sender
        # Its transaction: the product locked, the batch changed, under the span.
        statements = [s for s in spans if s.kind == "client" and s.service == process.service]
        assert any("UPDATE batches" in str(s.attributes["db.statement"]) for s in statements)

    # What the worker logs about a message, it logs in the message's trace.
    unknown, unknown_trace, _ = traceparent()
    poison = {"batchref": random_ref("unknown"), "qty": 1, "traceparent": unknown}
    await traced.redis.publish("change_batch_quantity", json.dumps(poison))

    def logged() -> list[dict[str, object]]:
        records = json_lines(traced.worker.output())
        return [r for r in records if r.get("trace_id") == unknown_trace]

    await eventually(lambda: bool(logged()), 10, traced.worker.report)
    assert any("dead-lettering" in str(r["message"]) for r in logged()), logged()


async def test_an_idle_api_and_worker_export_no_span_and_work_is_traced_again(
    traced: Traced,
) -> None:
    # Start-up's own statements are exported within the first batches: let them go.
    await asyncio.sleep(1)
    seen = len(traced.receiver.spans)
    # Idle: the relays poll every 0.2 s, the gauges every 5 s, the worker reads
    # the stream and claims from it every second; a probe asks each.
    async with httpx.AsyncClient(base_url=traced.api.url, timeout=5) as client:
        for _ in range(3):
            assert (await client.get("/ready")).status_code == 200
            assert (await client.get("/health")).status_code == 200
            await asyncio.sleep(2.5)
        assert traced.receiver.spans[seen:] == []

        sku = random_ref("sku")
        batch = {"ref": random_ref("batch"), "sku": sku, "qty": 5, "eta": None}
        assert (await client.post("/add_batch", json=batch)).status_code == 201

    async def traced_again() -> bool:
        return any(s.kind == "server" for s in traced.receiver.spans[seen:])

    await eventually(traced_again, 15, "the write was not traced")
