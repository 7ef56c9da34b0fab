"""The change_batch_quantity stream and the line_allocated stream, in-process.

A redis-server of each test's own, a real database (SQLite and PostgreSQL),
and the stream consumer as the worker runs it, as a task. What a worker
process does when it is killed or stopped is in tests/e2e/test_streams.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import select

from app.adapters import tables
from app.adapters.publisher import RedisPublisher
from app.adapters.streams import create_group, group_stats
from app.domain import commands
from app.entrypoints.cli import dead_letters as dead_letter_commands
from app.entrypoints.messaging.redis_transport import StreamConsumer
from app.wire import CHANGE_BATCH_QUANTITY as STREAM
from tests.support.dead_letters import Service, policy_of, running_service
from tests.support.polling import eventually
from tests.support.refs import random_ref
from tests.support.servers import RedisServer

pytestmark = pytest.mark.redis

GROUP = "allocation"


@pytest.fixture
async def service(database_url: str, redis_server: RedisServer) -> AsyncIterator[Service]:
    async with running_service(database_url, redis_server.url) as service:
        yield service


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    async with Redis.from_url(redis_server.url) as client:
        yield client


@asynccontextmanager
async def consuming(
    service: Service, name: str = "worker-1", claim_idle: float = 60.0
) -> AsyncIterator[StreamConsumer]:
    """A stream consumer running as the worker runs it, stopped on leaving."""
    client = service.container.redis()
    assert client is not None
    consumer = StreamConsumer(
        client,
        policy_of(service.container, service.dead_letters),
        group=GROUP,
        name=name,
        claim_idle=claim_idle,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop), name=f"stream consumer {name}")
    try:
        yield consumer
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def new_batch(service: Service, qty: int = 10) -> str:
    ref = random_ref("batch")
    await service.container.bus().handle(commands.CreateBatch(ref, random_ref("sku"), qty, None))
    return ref


async def purchased(service: Service, ref: str) -> int:
    b = tables.batches.c
    async with service.container.engine().connect() as conn:
        qty = await conn.scalar(select(b.purchased_quantity).where(b.reference == ref))
    assert qty is not None, f"no batch {ref}"
    return int(qty)


def counted(consumer: StreamConsumer, what: str, n: int) -> Callable[[], Awaitable[bool]]:
    async def reached() -> bool:
        return consumer.counts[what] >= n

    return reached


async def settled(redis: Redis) -> bool:
    """Every entry read by the group and acknowledged."""
    stats = await group_stats(redis, STREAM, GROUP)
    return stats is not None and stats.pending == 0 and stats.lag == 0


async def test_poison_entries_are_dead_lettered_with_their_ids_and_acknowledged(
    service: Service, redis: Redis
) -> None:
    ref, unknown = await new_batch(service), random_ref("unknown")
    poison: list[dict[str, str | bytes]] = [
        {"batchref": ref},
        {"batchref": ref, "qty": "lots"},
        {"batchref": ref, "qty": "-1"},
        {"qty": "3"},
        {"batchref": b"caf\xe9", "qty": "1"},
        {"batchref": unknown, "qty": "3"},
    ]
    ids: list[Any] = [await redis.xadd(STREAM, fields) for fields in poison]  # type: ignore[arg-type, unused-ignore]
    await redis.xadd(STREAM, {"batchref": ref, "qty": "7"})

    async with consuming(service) as consumer:
        await eventually(lambda: settled(redis), 10.0, "every entry acknowledged")

    assert await purchased(service, ref) == 7
    kept = await service.dead_letters.entries()
    assert [d.stream_id for d in kept] == [i.decode() for i in ids]
    assert [d.reason for d in kept] == ["malformed"] * 5 + ["unknown_batch"]
    assert json.loads(kept[0].message) == {"batchref": ref}
    assert json.loads(kept[-1].message) == {"batchref": unknown, "qty": 3}
    assert json.loads(kept[4].message)["batchref"].encode(errors="surrogateescape") == b"caf\xe9"
    assert consumer.counts["received"] == 7
    assert (consumer.counts["applied"], consumer.counts["dead_lettered"]) == (1, 6)


async def test_an_older_entry_claimed_after_a_newer_one_was_applied_does_not_win(
    service: Service, redis: Redis
) -> None:
    ref = await new_batch(service)
    await create_group(redis, STREAM, GROUP)
    await redis.xadd(STREAM, {"batchref": ref, "qty": "3"})
    # A worker reads the older entry and dies before it acknowledges it.
    await redis.xreadgroup(GROUP, "dead-worker", {STREAM: ">"}, count=1)
    await redis.xadd(STREAM, {"batchref": ref, "qty": "8"})
    async with consuming(service, "worker-1") as first:
        await eventually(counted(first, "applied", 1), 10.0, "the newer entry applied")
    assert await purchased(service, ref) == 8

    async with consuming(service, "worker-2", claim_idle=0.05) as second:
        await eventually(lambda: settled(redis), 10.0, "the older entry claimed and acknowledged")

    assert second.counts["claimed"] == 1
    assert second.counts["superseded"] == 1
    assert await purchased(service, ref) == 8


async def test_an_older_entry_replayed_from_the_dead_letters_does_not_win(
    service: Service, redis: Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    early, on_time = random_ref("batch"), await new_batch(service)
    # Both entries name a batch that does not exist yet: dead-lettered.
    await redis.xadd(STREAM, {"batchref": early, "qty": "3"})
    await redis.xadd(STREAM, {"batchref": on_time, "qty": "4"})
    await redis.xadd(STREAM, {"batchref": early + "-also", "qty": "6"})
    async with consuming(service) as consumer:
        await eventually(lambda: settled(redis), 10.0, "the entries dead-lettered")
        [stale, _] = await service.dead_letters.entries()
        await service.container.bus().handle(
            commands.CreateBatch(early, random_ref("sku"), 10, None)
        )
        await service.container.bus().handle(
            commands.CreateBatch(early + "-also", random_ref("sku"), 10, None)
        )
        await redis.xadd(STREAM, {"batchref": early, "qty": "8"})
        await eventually(counted(consumer, "applied", 2), 10.0, "the newer entry applied")
    assert await purchased(service, early) == 8

    code = await dead_letter_commands.replay(service.dead_letters, consumer.policy, None)

    assert code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"{stale.id}: not applied: a later change to the batch was applied already")
    assert out[1].endswith(": applied")  # nothing newer for that batch: it applies
    assert await purchased(service, early) == 8
    assert await purchased(service, early + "-also") == 6
    assert await service.dead_letters.entries() == []


async def test_line_allocated_is_appended_to_a_stream_trimmed_to_about_its_length(
    redis: Redis,
) -> None:
    publisher = RedisPublisher(redis, streams={"line_allocated": 100})
    payloads = [
        {
            "orderid": f"order-{n}",
            "sku": "sku",
            "qty": n,
            "batchref": "batch",
            "event_id": f"event-{n}",
            "request_id": None if n % 2 else f"request-{n}",
        }
        for n in range(1000)
    ]

    for payload in payloads:
        await publisher.publish("line_allocated", payload)

    length = await redis.xlen("line_allocated")
    assert 100 <= length < 300, length
    # A reader that starts now reads the latest, each with every field, as text.
    entries: Any = await redis.xrange("line_allocated")
    assert len(entries) == length
    assert [fields for _, fields in entries[-2:]] == [
        {
            b"orderid": b"order-998",
            b"sku": b"sku",
            b"qty": b"998",
            b"batchref": b"batch",
            b"event_id": b"event-998",
            b"request_id": b"request-998",
        },
        {
            b"orderid": b"order-999",
            b"sku": b"sku",
            b"qty": b"999",
            b"batchref": b"batch",
            b"event_id": b"event-999",
            b"request_id": b"",
        },
    ]
