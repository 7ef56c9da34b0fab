"""The dead-letter list end to end: ``allocation worker`` fills it, ``allocation
dead-letters`` lists, replays and drops, each a real process, on a real Redis
(a list of the test's own) and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from tests.support.polling import eventually
from tests.support.processes import Processes, dead_redis_url, describe, run_cli, service_env
from tests.support.refs import random_ref
from tests.support.scenarios import add_batch, batch

DEADLINE = 10.0
DROPPED_ONE = "dropped 1 dead letter\n"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    async with Redis.from_url(redis_url) as client:
        yield client


@pytest.fixture
async def dead_letter_key(redis: Redis) -> AsyncIterator[str]:
    key = f"test:dead-letters:{uuid.uuid4().hex}"
    try:
        yield key
    finally:
        await redis.delete(key)


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
async def test_the_worker_dead_letters_and_the_operator_lists_replays_and_drops(
    module_database: str, redis_url: str, redis: Redis, dead_letter_key: str, tmp_path: Path
) -> None:
    env = service_env(
        module_database, redis_url, relay_interval=0.2, dead_letter_key=dead_letter_key
    )
    ref, sku = random_ref("batch"), random_ref("sku")  # the batch comes later
    sent = [
        b"\xff\xfe not even UTF-8",
        json.dumps({"batchref": ref, "qty": "lots"}).encode(),
        json.dumps({"batchref": ref, "qty": 4}).encode(),
    ]
    async with Processes(tmp_path) as processes:
        api, worker = await processes.start_api_and_worker(env)

        for data in sent:
            await redis.publish("change_batch_quantity", data)

        async def all_kept() -> bool:
            return await redis.llen(dead_letter_key) == len(sent)

        await eventually(all_kept, DEADLINE, processes.report)

        # Listed as JSON, whole...
        result = await run_cli(env, "dead-letters", "list", "--json")
        assert result.returncode == 0, describe(result)
        listed = json.loads(result.stdout)
        assert [d["reason"] for d in listed] == ["malformed", "malformed", "unknown_batch"]
        assert [d["attempts"] for d in listed] == [1, 1, 1]
        assert listed[0]["encoding"] == "base64"
        assert base64.b64decode(listed[0]["message"]) == sent[0]
        assert [d["message"] for d in listed[1:]] == [data.decode() for data in sent[1:]]
        assert listed[2]["error"] == {"type": "UnknownBatch", "message": f"Unknown batch {ref}"}
        not_utf8, wrong_type, unknown = (d["id"] for d in listed)

        # ...and as lines.
        result = await run_cli(env, "dead-letters", "list")
        assert result.returncode == 0, describe(result)
        lines = result.stdout.splitlines()
        assert [line.split()[0] for line in lines[:3]] == [not_utf8, wrong_type, unknown]
        assert "attempts=1  UnknownBatch: Unknown batch" in lines[2], describe(result)
        assert lines[3] == f"3 dead letters on {dead_letter_key}", describe(result)

        # Replayed before the batch exists: back on the list, one attempt more.
        result = await run_cli(env, "dead-letters", "replay", unknown)
        assert result.returncode == 1, describe(result)
        assert result.stdout == (
            f"{unknown}: failed again (UnknownBatch: Unknown batch {ref}); "
            "back on the list, 2 attempts\n"
        ), describe(result)

        # The batch is added; two operators replay the message at once: applied once.
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
            await add_batch(http, ref, sku, 10)
            replays = await asyncio.gather(
                run_cli(env, "dead-letters", "replay", unknown),
                run_cli(env, "dead-letters", "replay", unknown),
            )
            assert sorted(r.returncode for r in replays) == [0, 1], [describe(r) for r in replays]
            [applied] = [r for r in replays if r.returncode == 0]
            [late] = [r for r in replays if r.returncode == 1]
            assert applied.stdout == f"{unknown}: applied\n", describe(applied)
            assert "no such dead letter" in late.stderr, describe(late)
            assert (await batch(http, ref))["purchased"] == 4

        result = await run_cli(env, "dead-letters", "replay", unknown)
        assert result.returncode == 1, describe(result)
        assert f"{unknown}: no such dead letter" in result.stderr, describe(result)

        # The malformed ones stay malformed however often replayed; dropped, they are gone.
        result = await run_cli(env, "dead-letters", "replay", "--all")
        assert result.returncode == 1, describe(result)
        assert [line.split(":")[0] for line in result.stdout.splitlines()] == [
            not_utf8,
            wrong_type,
        ], describe(result)
        result = await run_cli(env, "dead-letters", "drop", wrong_type)
        assert (result.returncode, result.stdout) == (0, "dropped 1 dead letter\n"), describe(
            result
        )
        result = await run_cli(env, "dead-letters", "list", "--json")
        [left] = json.loads(result.stdout)
        assert (left["id"], left["attempts"]) == (not_utf8, 2)
        assert base64.b64decode(left["message"]) == sent[0]  # still byte for byte
        result = await run_cli(env, "dead-letters", "drop", "--all")
        assert (result.returncode, result.stdout) == (0, "dropped 1 dead letter\n"), describe(
            result
        )
        result = await run_cli(env, "dead-letters", "list")
        assert result.stdout == f"no dead letters on {dead_letter_key}\n", describe(result)

        assert worker.running, processes.report()


async def test_without_redis_url_or_nats_url_the_commands_say_so() -> None:
    env = service_env("sqlite+aiosqlite:///unused.db")

    for args in (("list",), ("replay", "--all")):  # replay needs the database too: not first
        result = await run_cli(env, "dead-letters", *args)

        assert result.returncode == 1, describe(result)
        assert "neither REDIS_URL nor NATS_URL is set" in result.stderr, describe(result)


async def test_with_redis_away_the_commands_say_so() -> None:
    env = service_env("sqlite+aiosqlite:///unused.db", dead_redis_url())

    result = await run_cli(env, "dead-letters", "list")

    assert result.returncode == 1, describe(result)
    assert "cannot use Redis: ConnectionError" in result.stderr, describe(result)


@pytest.mark.parametrize("args", [("drop",), ("replay", "some-id", "--all")])
async def test_an_id_or_all_is_needed(args: tuple[str, ...]) -> None:
    result = await run_cli(service_env("sqlite+aiosqlite:///unused.db"), "dead-letters", *args)

    assert result.returncode == 2, describe(result)
    assert "give a dead letter's id, or --all" in result.stderr, describe(result)
