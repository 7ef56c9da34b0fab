"""Two deployments on one Redis and one NATS, apart by CHANNEL_PREFIX: neither hears the other.

Each is an API and a worker on a database of its own, with batches of the
same reference, on EVENT_BROKERS=redis,nats. A change sent to one
deployment's channel, stream or subject changes its batch alone; an
allocation in one is published on its own line_allocated alone.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from tests.support.databases import postgres_database
from tests.support.nats import Nats, running_nats
from tests.support.polling import eventually
from tests.support.processes import Api, Processes, service_env
from tests.support.redis import Subscriber
from tests.support.refs import random_ref
from tests.support.scenarios import add_batch, allocate
from tests.support.servers import RedisServer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

PREFIXES = ("staging.", "production.")


@dataclass
class Deployment:
    prefix: str
    api: Api

    async def quantity(self, ref: str) -> int:
        async with httpx.AsyncClient(base_url=self.api.url, timeout=10) as client:
            purchased: int = (await client.get(f"/batches/{ref}")).json()["purchased"]
            return purchased


@pytest.fixture
async def deployments(
    postgres_server_url: str, redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[tuple[list[Deployment], Nats]]:
    async with (
        running_nats() as nats,
        postgres_database(postgres_server_url) as first,
        postgres_database(postgres_server_url) as second,
        Processes(tmp_path) as processes,
    ):
        found = []
        for prefix, database in zip(PREFIXES, (first, second), strict=True):
            env = service_env(
                database,
                redis_server.url,
                nats_url=nats.url,
                event_brokers="redis,nats",
                channel_prefix=prefix,
                relay_interval=0.2,
            )
            api = processes.api(env, name=f"api-{prefix}")
            worker = processes.worker(env, name=f"worker-{prefix}")
            api.start()
            worker.start()
            await api.serving()
            await worker.reading()
            found.append(Deployment(prefix, api))
        yield found, nats


async def test_each_deployment_takes_only_its_own_changes_and_publishes_on_its_own_channel(
    deployments: tuple[list[Deployment], Nats], redis_server: RedisServer
) -> None:
    (staging, production), nats = deployments
    ref, sku = random_ref("batch"), random_ref("sku")
    for deployment in (staging, production):
        async with httpx.AsyncClient(base_url=deployment.api.url, timeout=10) as client:
            await add_batch(client, ref, sku, 10)

    async with Redis.from_url(redis_server.url) as redis:
        # Pub/sub, the stream and the subject of staging: staging's batch alone changes.
        change = json.dumps({"batchref": ref, "qty": 7})
        assert await redis.publish(f"{staging.prefix}change_batch_quantity", change) == 1
        await eventually(lambda: _is(staging, ref, 7), 15, "staging never took its change")
        await redis.xadd(f"{staging.prefix}change_batch_quantity", {"batchref": ref, "qty": 8})
        await eventually(lambda: _is(staging, ref, 8), 15, "staging never read its stream")
    async with nats.client() as connection:
        js = connection.jetstream(timeout=10)
        await js.publish(
            f"{production.prefix}change_batch_quantity",
            b'{"batchref": "%s", "qty": 9}' % ref.encode(),
        )
    await eventually(lambda: _is(production, ref, 9), 15, "production never took its subject")
    assert await staging.quantity(ref) == 8
    assert await production.quantity(ref) == 9
    # Nobody listens under the book's own names.
    async with Redis.from_url(redis_server.url) as redis:
        assert await redis.publish("change_batch_quantity", change) == 0

    subscribers = {
        name: Subscriber(redis_server.url, name)
        for name in ("line_allocated", *(f"{p}line_allocated" for p in PREFIXES))
    }
    for subscriber in subscribers.values():
        await subscriber.__aenter__()
    try:
        orderid = random_ref("order")
        async with httpx.AsyncClient(base_url=production.api.url, timeout=10) as client:
            await allocate(client, orderid, sku, 1)

        async def published() -> bool:
            return bool(await subscribers["production.line_allocated"].received())

        await eventually(published, 15, "production never published its allocation")
        assert [
            m["orderid"] for m in await subscribers["production.line_allocated"].received()
        ] == [orderid]
        assert await subscribers["staging.line_allocated"].received() == []
        assert await subscribers["line_allocated"].received() == []
    finally:
        for subscriber in subscribers.values():
            await subscriber.__aexit__(None, None, None)
    assert [m["orderid"] for m in await nats.messages("production.line_allocated")] == [orderid]
    assert await nats.messages("staging.line_allocated") == []


async def _is(deployment: Deployment, ref: str, qty: int) -> bool:
    return await deployment.quantity(ref) == qty
