"""NATS JetStream with real processes: an API, a worker, and nats-servers of the test's own.

The service runs on NATS alone (no Redis). A worker killed with SIGKILL
mid-stream loses no change; against a 3-node cluster with 3-replica
streams, the node leading the streams is killed under load, in and out,
and nothing is lost: every change is applied (each batch ends at the last
change sent for it) and every allocation appears on line_allocated once.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from nats.errors import Error as NatsError

from app.adapters.jetstream import JetStream, consumer_stats
from app.wire import CHANGE_BATCH_QUANTITY, LINE_ALLOCATED
from tests.support.batches import INITIAL, new_batches, quantities
from tests.support.nats import Nats, running_nats
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
from tests.support.servers import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SETTLE = 120.0  # seconds for the workers to get through what was sent
READING = f"reading {CHANGE_BATCH_QUANTITY} in stream"
DURABLE = "allocation"


@dataclass
class Sent:
    """Changes published, in the stream's order: (batch ref, qty, or None if poison)."""

    changes: list[tuple[str, int | None]]

    def last(self) -> dict[str, int]:
        return {ref: qty for ref, qty in self.changes if qty is not None}


async def reading(worker: Worker, within: float = 30) -> None:
    def pulls() -> bool:
        assert worker.running, f"{worker.name} exited\n{worker.report()}"
        return worker.output().count(READING) >= worker.starts

    await eventually(pulls, within, lambda: f"{worker.name} not reading\n{worker.report()}")


async def send(nats: Nats, refs: list[str], count: int, seed: int, poison_every: int = 0) -> Sent:
    """``count`` changes over ``refs``, one after the other, each until JetStream has it.

    A publish that fails (a node died) is made again with the same
    ``Nats-Msg-Id``: stored once, whichever try got through.
    """
    rng = random.Random(seed)
    sent: list[tuple[str, int | None]] = []
    async with nats.client() as client:
        js = client.jetstream(timeout=2)
        for n in range(1, count + 1):
            ref = rng.choice(refs)
            qty = None if poison_every and n % poison_every == 0 else rng.randint(0, 500)
            data = json.dumps({"batchref": ref, "qty": "lots" if qty is None else qty}).encode()
            headers = {"Nats-Msg-Id": f"change-{seed}-{n}"}

            async def stored(data: bytes = data, headers: dict[str, str] = headers) -> bool:
                try:
                    await js.publish(CHANGE_BATCH_QUANTITY, data, headers=headers)
                except (NatsError, TimeoutError):
                    return False
                return True

            await eventually(stored, SETTLE, f"change {n} stored", interval=0.1)
            sent.append((ref, qty))
    return Sent(sent)


async def settled(nats: Nats) -> bool:
    """Every change delivered to the durable consumer and acknowledged."""
    jetstream = JetStream([node.url for node in nats.nodes if node.running])
    try:
        stats = await consumer_stats(jetstream, CHANGE_BATCH_QUANTITY, DURABLE)
    except Exception:
        return False  # a cluster electing a leader
    finally:
        await jetstream.close()
    return stats is not None and stats.pending == 0 and stats.ack_pending == 0


async def allocate_lines(api_url: str, count: int) -> list[str]:
    """``count`` order lines, each of a sku of its own, allocated; their order ids."""
    orderids = [random_ref("order") for _ in range(count)]
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
        for orderid in orderids:
            sku = random_ref("sku")
            await add_batch(http, random_ref("batch"), sku, 10)
            await allocate(http, orderid, sku, 1)
    return orderids


async def published_once(nats: Nats, orderids: list[str]) -> Counter[str]:
    """How many line_allocated messages each of the orders has."""
    counts = Counter(m["orderid"] for m in await nats.messages(LINE_ALLOCATED))
    return Counter({orderid: counts[orderid] for orderid in orderids})


def under_way(database: str, refs: list[str]) -> Callable[[], Awaitable[bool]]:
    """Whether some change was applied already."""

    async def some_applied() -> bool:
        done = await quantities(database, refs)
        return any(qty != INITIAL for qty in done.values())

    return some_applied


@pytest.fixture
async def single() -> AsyncIterator[Nats]:
    async with running_nats(1) as nats:
        yield nats


async def test_a_worker_killed_mid_stream_loses_nothing_and_the_tools_show_the_consumer(
    module_database: str, single: Nats, tmp_path: Path
) -> None:
    port = free_port()
    env = service_env(
        module_database,
        nats_url=single.url,
        relay_interval=0.2,
        nats_ack_wait=2,
        worker_port=port,
    )
    refs = await new_batches(module_database, 6)
    async with Processes(tmp_path) as processes:
        doomed = processes.worker(env, name="doomed")
        doomed.start()
        await reading(doomed)
        changes = asyncio.create_task(send(single, refs, 300, seed=1, poison_every=60))
        await eventually(under_way(module_database, refs), SETTLE, processes.report)
        assert await doomed.kill() == -signal.SIGKILL
        sent = await changes
        at_kill = await run_cli(env, "outbox")

        doomed.start()
        await reading(doomed)
        await eventually(lambda: settled(single), SETTLE, processes.report, interval=0.2)
        async with httpx.AsyncClient(timeout=5) as http:
            ready = await http.get(f"http://127.0.0.1:{port}/ready")
        listed = await run_cli(env, "dead-letters", "list", "--json")
        after = await run_cli(env, "outbox")
        assert await doomed.terminate() == 0, processes.report()
        await assert_no_drift(env)

    assert await quantities(module_database, refs) == sent.last(), processes.report()
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["nats"] == "ok"
    assert ready.json()["checks"]["jetstream"] == "ok"
    assert listed.returncode == 0, describe(listed)
    letters = json.loads(listed.stdout)
    assert [letter["reason"] for letter in letters] == ["malformed"] * 5, describe(listed)
    where = f"JetStream subject {CHANGE_BATCH_QUANTITY}, consumer {DURABLE}"
    assert at_kill.returncode == 0, describe(at_kill)
    assert where in at_kill.stdout, describe(at_kill)
    assert f"{where}: pending 0 (not delivered yet), ack pending 0" in after.stdout, describe(after)
    print(f"\nat the kill: {at_kill.stdout.splitlines()[-1]}")


async def test_a_node_killed_under_load_loses_nothing_in_or_out(
    module_database: str, tmp_path: Path
) -> None:
    async with running_nats(3) as cluster:
        env = service_env(
            module_database,
            nats_url=cluster.url,
            nats_stream_replicas=3,
            relay_interval=0.2,
            nats_ack_wait=2,
        )
        refs = await new_batches(module_database, 6)
        async with Processes(tmp_path) as processes:
            api, worker = processes.api(env), processes.worker(env)
            api.start()
            worker.start()
            await api.serving()
            await reading(worker)
            async with cluster.client() as client:
                info = await client.jetstream().stream_info("CHANGE_BATCH_QUANTITY")
            assert info.config.num_replicas == 3
            assert info.cluster is not None
            leader = next(n for n in cluster.nodes if n.name == info.cluster.leader)

            changes = asyncio.create_task(send(cluster, refs, 300, seed=2))
            lines = asyncio.create_task(allocate_lines(api.url, 40))

            await eventually(under_way(module_database, refs), SETTLE, processes.report)
            await leader.kill()
            sent, orderids = await changes, await lines

            await eventually(lambda: settled(cluster), SETTLE, processes.report, interval=0.2)

            published: Counter[str] = Counter()

            async def all_published() -> bool:
                try:  # the streams may still be electing a leader
                    published.update(await published_once(cluster, orderids))
                except (NatsError, TimeoutError):
                    return False
                if all(published.values()):
                    return True
                published.clear()
                return False

            await eventually(all_published, SETTLE, processes.report, interval=0.2)
            assert await worker.terminate() == 0, processes.report()
            await api.shut_down()

        assert await quantities(module_database, refs) == sent.last(), processes.report()
        assert set(published.values()) == {1}, published
        # The lost connection is logged once; the requests that failed
        # meanwhile (a leader being elected) are counted, not logged each.
        reconnects = [p.output().count("reconnected to NATS") for p in (api, worker)]
        outages = [p.output().count("nats unavailable") for p in (api, worker)]
        assert max(reconnects) <= 1, processes.report()
        assert max(outages) < len(sent.changes) // 20, processes.report()
        print(
            f"\nnode kill: {leader.name} (the stream's leader) killed under load; "
            f"{len(sent.changes)} changes over {len(refs)} batches, {len(orderids)} "
            f"allocations; every batch at its last change, each allocation once on "
            f"{LINE_ALLOCATED}; reconnects logged (api, worker): {reconnects}, "
            f"outage lines: {outages}"
        )
