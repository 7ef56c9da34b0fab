"""Redis going away loses no event, and the consumer comes back with it.

A redis-server of the test's own is stopped and started again on the same
port; PostgreSQL holds the outbox. While Redis is down, allocations still
succeed (202) and show at once, and their ``line_allocated`` publishes fail
and wait in the outbox; once it is back, delivery sends exactly those, once
each. No relay runs by itself: the tests run delivery passes by hand.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis

from app import views
from app.adapters.read_source import ReadSource
from app.config import Settings
from app.container import Container
from app.domain import commands
from app.entrypoints.messaging.redis_transport import PubSubConsumer
from app.main import create_app
from app.wire import CHANGE_BATCH_QUANTITY as CHANNEL
from tests.support.apps import serving
from tests.support.dead_letters import policy_of
from tests.support.outbox import allocated_row, deliver_until_delivered, handled_by, pending_count
from tests.support.polling import eventually
from tests.support.redis import Subscriber
from tests.support.refs import random_ref
from tests.support.servers import RedisServer

pytestmark = pytest.mark.postgres

BEFORE, DURING = 5, 7


@pytest.fixture
async def app_client(
    module_database: str, redis_server: RedisServer
) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process on the test's own Redis; its container is ``app.state.services``."""
    settings = Settings(
        database_url=module_database,
        redis_url=redis_server.url,
        relay_enabled=False,
    )
    app = create_app(settings)
    async with serving(app) as client:
        client.app_container = app.state.services  # type: ignore[attr-defined, unused-ignore]
        yield client


def container_of(client: httpx.AsyncClient) -> Container:
    container: Container = client.app_container  # type: ignore[attr-defined, unused-ignore]
    return container


async def test_publishes_missed_while_redis_is_down_are_sent_once_it_is_back(
    app_client: httpx.AsyncClient, redis_server: RedisServer
) -> None:
    container = container_of(app_client)
    engine, read_engine = container.engine(), container.read_engine()
    sku, ref = random_ref("sku"), random_ref("batch")
    await container.bus().handle(commands.CreateBatch(ref, sku, 100, None))
    before = [random_ref("before") for _ in range(BEFORE)]
    during = [random_ref("during") for _ in range(DURING)]
    ours = set(before) | set(during)

    async with Subscriber(redis_server.url, "line_allocated") as subscriber:
        for orderid in before:
            await container.bus().handle(commands.Allocate(orderid, sku, 1))
        sent = [await allocated_row(engine, orderid) for orderid in before]
        await deliver_until_delivered(container, [row.id for row in sent])
        received = await subscriber.received()
    sent_before = sorted(m["orderid"] for m in received if m["orderid"] in ours)
    assert sent_before == sorted(before)

    await redis_server.stop()
    for i, orderid in enumerate(during):
        # Half through the bus, half through HTTP: neither notices Redis is down.
        if i % 2:
            response = await app_client.post(
                "/allocate", json={"orderid": orderid, "sku": sku, "qty": 1}
            )
            assert response.status_code == 202
        else:
            await container.bus().handle(commands.Allocate(orderid, sku, 1))
    await container.delivery().deliver_due()  # the publishes fail

    for orderid in during:
        assert await views.allocations(ReadSource(read_engine), orderid) == [
            {"sku": sku, "batchref": ref}
        ]
    assert (await app_client.get(f"/allocations/{during[1]}")).status_code == 200
    missed = [await allocated_row(engine, orderid) for orderid in during]
    # The product's first failed; the others wait behind it, in order, untried.
    first, *behind = sorted(missed, key=lambda row: row.payload["version"])
    for row in missed:
        assert row.pending
        assert await handled_by(engine, row.id) == set()
    assert first.attempts == 1
    assert first.last_error is not None
    assert "publish_allocated_event" in first.last_error
    assert all(row.attempts == 0 for row in behind)
    for orderid in before:
        assert not (await allocated_row(engine, orderid)).pending

    await redis_server.start()
    async with Subscriber(redis_server.url, "line_allocated") as subscriber:
        await deliver_until_delivered(container, [row.id for row in missed], within=30)
        received = await subscriber.received()

    resent = [m["event_id"] for m in received if m["orderid"] in ours]
    assert resent == [row.id for row in (first, *behind)]  # each once, in order, no `before`
    assert {m["orderid"] for m in received if m["orderid"] in ours} == set(during)
    assert await pending_count(engine) == 0


async def test_the_consumer_reconnects_after_a_restart_and_dead_letters_bad_messages(
    app_client: httpx.AsyncClient, redis_server: RedisServer
) -> None:
    container = container_of(app_client)
    read_engine = container.read_engine()
    sku, ref, unknown = random_ref("sku"), random_ref("batch"), random_ref("nope")
    await container.bus().handle(commands.CreateBatch(ref, sku, 10, None))
    client = container.redis()
    assert client is not None
    dead_letters = container.dead_letters()
    assert dead_letters is not None
    consumer = PubSubConsumer(client, policy_of(container, dead_letters), reconnect_delay=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop), name="test consumer")

    async def subscribed() -> bool:
        if not consumer.ready.is_set():
            return False
        async with Redis.from_url(redis_server.url) as client:
            counts = dict(await client.pubsub_numsub(CHANNEL))
        return bool(counts.get(CHANNEL.encode()) == 1)

    async def disconnected() -> bool:
        return not consumer.ready.is_set() and consumer.counts["reconnects"] >= 1

    async def applied() -> bool:
        # Messages are handled in order: the two bad ones are behind it by then.
        return consumer.counts["applied"] == 1 or task.done()

    try:
        await eventually(subscribed, 10.0, "the consumer to subscribe")
        await redis_server.stop()
        await eventually(disconnected, 30, "the consumer to notice Redis is gone")
        await redis_server.start()
        await eventually(subscribed, 30, "the consumer to subscribe again")

        async with Redis.from_url(redis_server.url) as client:
            await client.publish(CHANNEL, b"{not json")
            await client.publish(CHANNEL, json.dumps({"batchref": unknown, "qty": 5}))
            await client.publish(CHANNEL, json.dumps({"batchref": ref, "qty": 7}))
        await eventually(applied, 10.0, "the consumer to apply the quantity change")

        assert consumer.counts["malformed"] == 1
        assert consumer.counts["unknown_batch"] == 1
        kept = await dead_letters.entries()
        assert [(d.reason, d.message) for d in kept] == [
            ("malformed", "{not json"),
            ("unknown_batch", json.dumps({"batchref": unknown, "qty": 5})),
        ]
        batch = await views.batch(ReadSource(read_engine), ref)
        assert batch is not None
        assert batch["purchased"] == 7
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
