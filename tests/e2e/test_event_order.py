"""Outbound events of a product go out in order, whichever process delivers them, and say so.

An API commits an allocation and dies before publishing it (its Redis was
away, so its first try failed); the worker then reallocates the same line
and commits that. Once the worker's relay takes over, the two events must
reach Redis in the order they happened, each with a growing ``version``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from tests.support.databases import query
from tests.support.polling import eventually
from tests.support.processes import Processes, assert_no_drift, dead_redis_url, service_env
from tests.support.redis import Subscriber
from tests.support.refs import random_ref
from tests.support.scenarios import add_batch, allocate
from tests.support.servers import RedisServer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


async def test_an_allocation_held_back_goes_out_before_the_reallocation_that_followed_it(
    private_database: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    sku, orderid = random_ref("sku"), random_ref("order")
    warehouse, shipment = random_ref("batch"), random_ref("batch")
    async with (
        Processes(tmp_path) as processes,
        Subscriber(redis_server.url, "line_allocated") as line_allocated,
        Redis.from_url(redis_server.url) as redis,
    ):
        api = processes.api(service_env(private_database, dead_redis_url(), relay_interval=0.2))
        await api.start_serving()
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
            await add_batch(http, warehouse, sku, 10)
            await add_batch(http, shipment, sku, 10, "2031-01-01")
            await allocate(http, orderid, sku, 5)  # to the warehouse's batch

        async def tried_and_failed() -> bool:
            rows = await query(
                private_database, "SELECT attempts FROM outbox WHERE sku = :s", s=sku
            )
            # Three failures: its next try is 4 s away, well after the reallocation.
            return bool(rows) and all(attempts >= 3 for (attempts,) in rows)

        await eventually(tried_and_failed, 20, processes.report)
        await api.kill()  # died with the allocation committed and not published

        worker = processes.worker(
            service_env(private_database, redis_server.url, relay_interval=0.2)
        )
        await worker.start_reading()
        # The warehouse's batch is emptied: the line moves to the shipment.
        await redis.xadd("change_batch_quantity", {"batchref": warehouse, "qty": "0"})

        def mine() -> list[dict[str, Any]]:
            return [m for m in line_allocated.messages if m["orderid"] == orderid]

        async def both_out() -> bool:
            await line_allocated.received()
            return len(mine()) >= 2

        await eventually(both_out, 30, processes.report)
        await assert_no_drift(worker.env)
        entries: Any = await redis.xrange("line_allocated")
        [entry_a, entry_b] = entries

    first, second = mine()
    assert (first["batchref"], second["batchref"]) == (warehouse, shipment), processes.report()
    assert int(first["version"]) < int(second["version"])
    # The stream has them in that order too, positions and all.
    assert [e[1][b"batchref"].decode() for e in (entry_a, entry_b)] == [warehouse, shipment]
    assert int(entry_a[1][b"version"]) < int(entry_b[1][b"version"])
