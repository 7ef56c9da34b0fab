"""A hold's deadline outlives every process: kill the API that placed it, and the next
one to run expires it, and says so through the outbox, on Redis."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from tests.support.polling import eventually
from tests.support.processes import Processes, assert_no_drift, service_env
from tests.support.refs import random_ref
from tests.support.scenarios import add_batch

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


async def test_a_hold_placed_by_a_killed_api_expires_once_another_runs(
    private_database: str, redis_url: str, tmp_path: Path
) -> None:
    prefix = random_ref("p") + "."
    env = service_env(private_database, redis_url, relay_interval=0.2, channel_prefix=prefix)
    sku, holdid = random_ref("sku"), random_ref("hold")
    async with Processes(tmp_path) as processes:
        first = processes.api(env, name="first")
        await first.start_serving()
        async with httpx.AsyncClient(base_url=first.url, timeout=10) as http:
            await add_batch(http, random_ref("batch"), sku, 5)
            body = {"holdid": holdid, "lines": [{"sku": sku, "qty": 5}], "ttl_s": 2}
            placed = await http.post("/holds", json=body)
            assert placed.status_code == 201, placed.text
        expires_at = datetime.fromisoformat(placed.json()["expires_at"]).timestamp()
        await first.kill()
        # Nobody runs when its time passes.
        await asyncio.sleep(max(0.0, expires_at - time.time()) + 1)

        second = processes.api(env, name="second")
        await second.start_serving()
        async with httpx.AsyncClient(base_url=second.url, timeout=10) as http:
            started = time.time()

            async def freed() -> bool:
                product = (await http.get(f"/products/{sku}")).json()
                return bool(product["available_now"] == 5)

            await eventually(freed, 2 + 1, "the dead API's hold was not expired")
            assert time.time() - started <= 2 + 1
            assert (await http.get(f"/holds/{holdid}")).json()["state"] == "expired"

        client = Redis.from_url(redis_url)
        try:

            async def told() -> list[dict[bytes, bytes]]:
                """What the stream says of the hold: each event once (delivery is at least
                once), in the hold's version order (the outbox keeps none for holds)."""
                entries: Any = await client.xrange(f"{prefix}hold_changed")
                once = {fields[b"event_id"]: fields for _, fields in entries}
                return sorted(once.values(), key=lambda fields: int(fields[b"version"]))

            async def held_then_expired() -> bool:
                return [fields[b"state"] for fields in await told()] == [b"held", b"expired"]

            await eventually(held_then_expired, 10, "hold_changed did not say held, then expired")
            [_, expired] = await told()
            assert expired[b"holdid"].decode() == holdid
            assert expired[b"version"] == b"2"  # placed, then expired
            [line] = json.loads(expired[b"lines"])
            assert (line["sku"], line["qty"]) == (sku, 5)
        finally:
            await client.delete(f"{prefix}hold_changed")
            await client.aclose()
    await assert_no_drift(env)
