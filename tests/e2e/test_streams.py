"""Redis Streams with real processes: workers, uvicorn, and a redis-server of the test's own.

Workers share the ``change_batch_quantity`` stream through a consumer group;
one is killed mid-stream and the entries it held are claimed by the others;
what each batch ends with is compared with the last entry sent for it. A
worker stopped with SIGTERM while pub/sub messages arrive handles every one
it received. The API appends each ``line_allocated`` to a stream.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from app.adapters.dead_letters import DeadLetter
from app.adapters.streams import GroupStats, create_group, group_stats
from app.clock import position_now, position_text
from tests.support.batches import INITIAL, new_batches, quantities
from tests.support.polling import eventually
from tests.support.processes import (
    Processes,
    Worker,
    assert_no_drift,
    describe,
    run_cli,
    service_env,
)
from tests.support.refs import random_ref
from tests.support.scenarios import add_batch, allocate
from tests.support.servers import RedisServer

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

STREAM = "change_batch_quantity"
GROUP = "allocation"
SETTLE = 120.0  # seconds for the workers to get through a stream
STOPPED = re.compile(
    r"stopped reading the (?P<source>stream|channel) change_batch_quantity: "
    r"(?P<received>\d+) received, (?P<applied>\d+) applied, (?P<superseded>\d+) superseded, "
    r"(?P<dead_lettered>\d+) dead-lettered, (?P<unstored>\d+) that could not be dead-lettered, "
    r"(?P<handed_back>\d+) handed back"
)
# Seconds from SIGTERM to exit: a container's grace, after which SIGKILL would
# lose what the worker holds. About 5 on a quiet machine; with the suite in
# parallel on two cores, up to 8.3 seen.
STOPS_WITHIN = 10.0


@dataclass
class Setup:
    database: str
    redis: Redis
    env: dict[str, str]
    dead_letter_key: str


@pytest.fixture
async def setup(module_database: str, redis_server: RedisServer) -> AsyncIterator[Setup]:
    """Service settings on the module's database and the test's own Redis."""
    key = f"test:dead-letters:{uuid.uuid4().hex}"
    env = service_env(
        module_database,
        redis_server.url,
        relay_interval=0.2,
        dead_letter_key=key,
        stream_claim_idle=1,
    )
    async with Redis.from_url(redis_server.url) as redis:
        yield Setup(module_database, redis, env, key)


async def stats(redis: Redis) -> GroupStats | None:
    return await group_stats(redis, STREAM, GROUP)


async def settled(redis: Redis) -> bool:
    """Every entry read by the group and acknowledged."""
    now = await stats(redis)
    return now is not None and now.pending == 0 and now.lag == 0


def stop_counts(worker: Worker, source: str) -> Counter[str]:
    """The counts the worker logged when it stopped reading ``source`` (stream or channel)."""
    found = [m for m in STOPPED.finditer(worker.output()) if m["source"] == source]
    assert found, f"no counts logged for the {source}\n{worker.report()}"
    return Counter({k: int(v) for k, v in found[-1].groupdict().items() if k != "source"})


@dataclass
class Sent:
    """Entries added to the stream, in order: (entry id, batch ref, qty or None if poison)."""

    entries: list[tuple[str, str, int | None]]

    def last(self) -> dict[str, int]:
        """Each batch's quantity from the last valid entry sent for it."""
        return {ref: qty for _, ref, qty in self.entries if qty is not None}

    def poison(self) -> set[str]:
        return {entry_id for entry_id, _, qty in self.entries if qty is None}


async def send(redis: Redis, refs: list[str], count: int, seed: int, poison_every: int = 0) -> Sent:
    """``count`` entries over ``refs``, quantities at random; every ``poison_every``th is bad."""
    rng = random.Random(seed)
    planned: list[tuple[str, int | None]] = []
    for n in range(1, count + 1):
        bad = poison_every and n % poison_every == 0
        planned.append((rng.choice(refs), None if bad else rng.randint(0, 500)))
    ids: list[str] = []
    for start in range(0, count, 50):
        async with redis.pipeline(transaction=False) as pipe:
            for ref, qty in planned[start : start + 50]:
                pipe.xadd(STREAM, {"batchref": ref, "qty": "lots" if qty is None else str(qty)})
            ids.extend(i.decode() for i in await pipe.execute())
    return Sent([(i, ref, qty) for i, (ref, qty) in zip(ids, planned, strict=True)])


async def dead_lettered(setup: Setup) -> list[dict[str, object]]:
    return [json.loads(raw) for raw in await setup.redis.lrange(setup.dead_letter_key, 0, -1)]


async def test_entries_added_while_no_worker_runs_are_applied_when_one_starts(
    setup: Setup, tmp_path: Path
) -> None:
    refs = await new_batches(setup.database, 4)
    sent = await send(setup.redis, refs, 40, seed=1)
    assert await stats(setup.redis) is None  # no worker has ever read the stream
    result = await run_cli(setup.env, "outbox")
    assert result.returncode == 0, describe(result)
    assert f"stream {STREAM}, group {GROUP}: no such group yet" in result.stdout, describe(result)

    async with Processes(tmp_path) as processes:
        worker = processes.worker(setup.env)
        await worker.start_reading()
        await eventually(lambda: settled(setup.redis), SETTLE, processes.report)
        result = await run_cli(setup.env, "outbox")
        assert await worker.terminate() == 0, processes.report()

    assert await quantities(setup.database, refs) == sent.last()
    assert result.returncode == 0, describe(result)
    assert f"stream {STREAM}, group {GROUP}: pending 0 (read, not acknowledged), lag 0" in (
        result.stdout
    ), describe(result)
    counts = stop_counts(worker, "stream")
    assert counts["received"] == 40, worker.report()
    assert counts["applied"] + counts["superseded"] == 40, worker.report()


async def test_two_workers_share_the_stream_and_the_last_entry_per_batch_wins(
    setup: Setup, tmp_path: Path
) -> None:
    refs = await new_batches(setup.database, 5)
    # Both live: neither claims the other's entries, however slow the machine
    # (with the module's 1 s, a stall of one would be a second delivery).
    env = {**setup.env, "STREAM_CLAIM_IDLE": "60"}
    async with Processes(tmp_path) as processes:
        workers = [processes.worker(env, name=f"worker-{n}") for n in (1, 2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            await worker.reading()

        sent = await send(setup.redis, refs, 300, seed=2)

        await eventually(lambda: settled(setup.redis), SETTLE, processes.report)
        for worker in workers:
            assert await worker.terminate() == 0, processes.report()

    assert await quantities(setup.database, refs) == sent.last()
    counts = [stop_counts(worker, "stream") for worker in workers]
    print(f"\ntwo workers, 300 entries sent: {[dict(c) for c in counts]}")
    assert all(c["received"] > 0 for c in counts), counts  # both took a share
    assert sum(c["received"] for c in counts) == 300, counts  # each entry once
    assert sum(c["applied"] + c["superseded"] for c in counts) == 300, counts
    assert await dead_lettered(setup) == []


async def test_a_worker_killed_mid_stream_loses_nothing_and_the_last_entry_wins(
    setup: Setup, tmp_path: Path
) -> None:
    refs = await new_batches(setup.database, 8)
    async with Processes(tmp_path) as processes:
        doomed = processes.worker(setup.env, name="doomed")
        await doomed.start_reading()

        sent = await send(setup.redis, refs, 500, seed=3, poison_every=50)

        async def well_under_way() -> bool:
            now = await stats(setup.redis)
            return now is not None and now.lag is not None and now.lag <= 400

        await eventually(well_under_way, SETTLE, processes.report, interval=0.02)
        assert await doomed.kill() == -signal.SIGKILL
        at_kill = await stats(setup.redis)
        assert at_kill is not None
        assert at_kill.lag, f"the stream was done at the kill: {at_kill}"

        # The dead worker's entries wait, unacknowledged, until the others claim them.
        others = [processes.worker(setup.env, name="other"), doomed]
        for worker in others:
            worker.start()
        await eventually(lambda: settled(setup.redis), SETTLE, processes.report)
        for worker in others:
            assert await worker.terminate() == 0, processes.report()
        await assert_no_drift(setup.env)

    final = await quantities(setup.database, refs)
    assert final == sent.last(), processes.report()
    letters = await dead_lettered(setup)
    assert {letter["stream_id"] for letter in letters} == sent.poison()
    counts = [stop_counts(worker, "stream") for worker in others]
    claimed = sum(worker.output().count("unacknowledged entries of") for worker in others)
    print(
        f"\nkill test: sent {len(sent.entries)} entries ({len(sent.poison())} poison) over "
        f"{len(refs)} batches; killed with {at_kill.pending} read and unacknowledged, "
        f"{at_kill.lag} unread; after the kill: "
        f"received {sum(c['received'] for c in counts)}, "
        f"applied {sum(c['applied'] for c in counts)}, "
        f"superseded {sum(c['superseded'] for c in counts)}, "
        f"dead-lettered {sum(c['dead_lettered'] for c in counts)} "
        f"(claims logged: {claimed}); dead letters on the list: {len(letters)}; "
        "group pending 0, lag 0; every batch at its last entry"
    )
    if at_kill.pending:
        assert claimed, processes.report()
    # The survivors got through all that was unread or unacknowledged at the kill.
    assert sum(c["received"] for c in counts) >= at_kill.lag + at_kill.pending, counts


async def test_sigterm_stops_within_seconds_and_loses_no_pubsub_message_received(
    setup: Setup, tmp_path: Path
) -> None:
    messages = 2000
    refs = await new_batches(setup.database, messages)
    poison = {n for n in range(messages) if n % 25 == 24}
    plan = [
        json.dumps({"batchref": f"unknown-{n}" if n in poison else ref, "qty": n % 50 + 1})
        for n, ref in enumerate(refs)
    ]
    async with Processes(tmp_path) as processes:
        worker = processes.worker(setup.env)
        await worker.start_listening()
        receivers: list[int] = []

        async def publish() -> None:
            # A burst, far faster than the worker applies it: a backlog builds.
            for start in range(0, messages, 100):
                async with setup.redis.pipeline(transaction=False) as pipe:
                    for data in plan[start : start + 100]:
                        pipe.publish("change_batch_quantity", data)
                    receivers.extend(await pipe.execute())
                await asyncio.sleep(0.01)  # pacing the sender, not waiting for a state

        publisher = asyncio.create_task(publish())

        async def some_applied() -> bool:
            now = await quantities(setup.database, refs[:50])
            return sum(qty != INITIAL for qty in now.values()) >= 10

        await eventually(some_applied, 30, processes.report, interval=0.02)
        at_term = await quantities(setup.database, refs)
        worker.send(signal.SIGTERM)
        sent_at = asyncio.get_running_loop().time()
        code = await worker.wait(within=60)
        stopped_in = asyncio.get_running_loop().time() - sent_at
        await publisher
        counts = stop_counts(worker, "channel")
        # What it handed back to the stream, the next worker applies.
        successor = processes.worker(setup.env, name="successor")
        await successor.start_reading()
        await eventually(lambda: settled(setup.redis), SETTLE, processes.report)

    assert code == 0, processes.report()
    assert stopped_in <= STOPS_WITHIN, f"stopped in {stopped_in:.1f}s\n{worker.report()}"
    delivered = [n for n, count in enumerate(receivers) if count == 1]
    final = await quantities(setup.database, refs)
    changed = {ref for ref, qty in final.items() if qty != INITIAL}
    assert changed == {refs[n] for n in delivered if n not in poison}, worker.report()
    for n in delivered:
        if n not in poison:
            assert final[refs[n]] == n % 50 + 1
    letters = await dead_lettered(setup)
    assert sorted(str(letter["message"]) for letter in letters) == sorted(
        plan[n] for n in delivered if n in poison
    )
    applied_at_term = sum(qty != INITIAL for qty in at_term.values())
    print(
        f"\nSIGTERM under pub/sub: {messages} published, {len(delivered)} delivered to the "
        f"worker, {applied_at_term} applied at the SIGTERM, stopped in {stopped_in:.1f}s; "
        f"logged at stop: {dict(counts)}"
    )
    assert counts["received"] == len(delivered), worker.report()
    assert (
        counts["received"] == counts["applied"] + counts["dead_lettered"] + counts["handed_back"]
    ), worker.report()
    assert counts["applied"] > applied_at_term, "nothing was left in hand at the SIGTERM"


async def test_an_allocation_is_appended_to_the_line_allocated_stream(
    setup: Setup, tmp_path: Path
) -> None:
    sku, ref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    request_id = f"req-{uuid.uuid4().hex}"
    await create_group(setup.redis, STREAM, GROUP)
    for qty in (1, 2, 3):
        await setup.redis.xadd(STREAM, {"batchref": ref, "qty": str(qty)})
    async with Processes(tmp_path) as processes:
        api = processes.api(setup.env)
        await api.start_serving()
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
            await add_batch(http, ref, sku, 10)
            http.headers["X-Request-ID"] = request_id
            await allocate(http, orderid, sku, 4)

            async def appended() -> bool:
                return await setup.redis.xlen("line_allocated") > 0

            await eventually(appended, 10, processes.report)
            metrics = (await http.get("/metrics")).text

    # A reader that starts now reads what was appended before it.
    async with Redis.from_url(setup.env["REDIS_URL"]) as late:
        answer: Any = await late.xread({"line_allocated": "0"})
    [[_, [(_, fields)]]] = answer
    event_id = fields.pop(b"event_id")
    assert event_id, fields
    assert fields == {
        b"orderid": orderid.encode(),
        b"sku": sku.encode(),
        b"qty": b"4",
        b"batchref": ref.encode(),
        b"version": b"2",
        b"request_id": request_id.encode(),
    }
    labels = f'group="{GROUP}",stream="{STREAM}"'
    assert f"allocation_stream_lag_entries{{{labels}}} 3.0" in metrics, metrics
    assert f"allocation_stream_pending_entries{{{labels}}} 0.0" in metrics, metrics


async def test_an_older_change_never_overwrites_a_patch_however_late_it_comes(
    setup: Setup, tmp_path: Path
) -> None:
    """A stream entry added before a PATCH, read by a consumer that died, claimed after it;
    a pub/sub message's and a stream entry's dead letters, replayed after it."""
    [ref, other] = await new_batches(setup.database, 2)
    await create_group(setup.redis, STREAM, GROUP)
    stale = await setup.redis.xadd(STREAM, {"batchref": ref, "qty": "50"})
    # A consumer reads it and dies before acknowledging it.
    await setup.redis.xreadgroup(GROUP, "died-holding-it", {STREAM: ">"}, count=1)
    received_before = DeadLetter.of(
        "change_batch_quantity",
        json.dumps({"batchref": other, "qty": 60}),
        "failed",
        "DatabaseUnavailable",
        "the database was away",
        3,
        None,
        position=position_text(position_now()),  # received now, before the PATCH
    )
    async with Processes(tmp_path) as processes:
        api = processes.api(setup.env)
        await api.start_serving()
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
            for batch in (ref, other):
                r = await http.patch(f"/batches/{batch}", json={"qty": 10})
                assert r.status_code == 202, r.text
        worker = processes.worker(setup.env)
        await worker.start_reading()  # claims the dead consumer's entry after a second
        await eventually(lambda: settled(setup.redis), SETTLE, processes.report)
        await setup.redis.rpush(setup.dead_letter_key, received_before.to_json())
        replayed = await run_cli(setup.env, "dead-letters", "replay", "--all")

    assert await quantities(setup.database, [ref, other]) == {ref: 10, other: 10}
    stale_id = stale.decode() if isinstance(stale, bytes) else stale
    assert f"skipping {STREAM} entry {stale_id}" in worker.output(), worker.report()
    assert replayed.returncode == 0, describe(replayed)
    assert f"{received_before.id}: not applied: a later change" in replayed.stdout
    assert await setup.redis.llen(setup.dead_letter_key) == 0
