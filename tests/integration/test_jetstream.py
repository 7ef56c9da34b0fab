"""change_batch_quantity and line_allocated on NATS JetStream, in-process.

A nats-server of each test's own (one node), a real database (SQLite and
PostgreSQL), no Redis: the service on NATS alone, its dead letters in a
JetStream stream. The consumer runs as the worker runs it, as a task. What
worker processes and a 3-node cluster do is in tests/e2e/test_jetstream.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
from nats.aio.msg import Msg
from nats.js.api import StreamConfig
from sqlalchemy import select

from app.adapters import tables
from app.adapters.dead_letters import AbstractDeadLetters
from app.adapters.jetstream import consumer_stats
from app.bootstrap import backlogs
from app.config import Settings
from app.container import Container
from app.domain import commands
from app.entrypoints.cli import dead_letters as dead_letter_commands
from app.entrypoints.messaging.jetstream_transport import JetStreamConsumer, durable_config
from app.metrics import JETSTREAM_ACK_PENDING, JETSTREAM_PENDING, JETSTREAM_REDELIVERED
from app.service_layer import gauges
from app.wire import CHANGE_BATCH_QUANTITY as SUBJECT
from tests.support.containers import running_container
from tests.support.dead_letters import policy_of
from tests.support.faults import fail_to_commit
from tests.support.nats import Nats, running_nats
from tests.support.outbox import OutboxRow, allocated_row, deliver_until_delivered
from tests.support.polling import eventually
from tests.support.refs import random_ref
from tests.support.servers import RedisServer

MAX_DELIVER = 3


@pytest.fixture
def database_url(private_database: str) -> str:
    """A database of the test's own: on the session's shared one, another relay
    (the uvicorn fixture's) could deliver this test's events."""
    return private_database


@pytest.fixture
async def nats_server() -> AsyncIterator[Nats]:
    async with running_nats() as server:
        yield server


@pytest.fixture
def settings(database_url: str, nats_server: Nats) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=None,
        nats_url=nats_server.url,
        relay_enabled=False,
        nats_ack_wait=1.0,
        nats_max_deliver=MAX_DELIVER,
    )


def dead_letters_of(container: Container) -> AbstractDeadLetters:
    dead_letters = container.dead_letters()
    assert dead_letters is not None
    return dead_letters


@asynccontextmanager
async def consuming(container: Container) -> AsyncIterator[JetStreamConsumer]:
    """The JetStream consumer as the worker runs it, stopped on leaving."""
    jetstream, settings = container.jetstream(), container.settings()
    assert jetstream is not None
    consumer = JetStreamConsumer(
        jetstream,
        policy_of(container, dead_letters_of(container)),
        durable=settings.nats_durable,
        ack_wait=settings.nats_ack_wait,
        max_deliver=settings.nats_max_deliver,
        reconnect_delay=0.1,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop), name="jetstream consumer")
    try:
        await eventually(lambda: consumer.ready.is_set() or task.done(), 10.0, "consumer ready")
        yield consumer
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def send(container: Container, nats: Nats, *messages: Mapping[str, object] | bytes) -> None:
    """Publish to the subject, in the stream the service makes (found, or created)."""
    jetstream = container.jetstream()
    assert jetstream is not None
    await jetstream.stream_for(SUBJECT)
    async with nats.client() as client:
        js = client.jetstream()
        for message in messages:
            data = message if isinstance(message, bytes) else json.dumps(message).encode()
            await js.publish(SUBJECT, data)


async def new_batch(container: Container, qty: int = 10) -> str:
    ref = random_ref("batch")
    await container.bus().handle(commands.CreateBatch(ref, random_ref("sku"), qty, None))
    return ref


async def purchased(container: Container, ref: str) -> int:
    b = tables.batches.c
    async with container.engine().connect() as conn:
        qty = await conn.scalar(select(b.purchased_quantity).where(b.reference == ref))
    assert qty is not None, f"no batch {ref}"
    return int(qty)


async def settled(container: Container) -> bool:
    """Every message delivered to the durable consumer and acknowledged."""
    jetstream = container.jetstream()
    assert jetstream is not None
    stats = await consumer_stats(jetstream, SUBJECT, container.settings().nats_durable)
    return stats is not None and stats.pending == 0 and stats.ack_pending == 0


async def test_changes_are_applied_and_acknowledged_and_poison_is_dead_lettered(
    container: Container, nats_server: Nats
) -> None:
    ref, unknown = await new_batch(container), random_ref("unknown")
    await send(
        container,
        nats_server,
        {"batchref": ref, "qty": 4},
        b"not json",
        {"batchref": unknown, "qty": 3},
        {"batchref": ref, "qty": 7},
    )

    async with consuming(container) as consumer:
        await eventually(lambda: settled(container), 15.0, "every message acknowledged")

    assert await purchased(container, ref) == 7
    letters = await dead_letters_of(container).entries()
    assert [(d.reason, d.message) for d in letters] == [
        ("malformed", "not json"),
        ("unknown_batch", json.dumps({"batchref": unknown, "qty": 3})),
    ]
    # Each letter keeps the message's stream sequence and when the stream stored it.
    assert [d.stream_id for d in letters] == ["2", "3"]
    assert all(d.position for d in letters)
    assert (consumer.counts["applied"], consumer.counts["dead_lettered"]) == (2, 2)


async def test_an_unacknowledged_change_comes_back_and_never_overwrites_a_later_one(
    container: Container, nats_server: Nats
) -> None:
    ref = await new_batch(container)
    await send(container, nats_server, {"batchref": ref, "qty": 5}, {"batchref": ref, "qty": 8})
    jetstream = container.jetstream()
    assert jetstream is not None
    # A worker takes the first change and dies before acknowledging it.
    js = await jetstream.context()
    stream = await jetstream.stream_for(SUBJECT)
    durable = container.settings().nats_durable
    config = durable_config(durable, container.settings().nats_ack_wait)
    subscription = await js.pull_subscribe(SUBJECT, durable=durable, stream=stream, config=config)
    [taken] = await subscription.fetch(1, timeout=5)
    assert json.loads(taken.data)["qty"] == 5

    async with consuming(container) as consumer:
        # The second comes first; the first after its ack wait, and is skipped.
        await eventually(lambda: consumer.counts["superseded"] == 1, 15.0, "the redelivery")
        await eventually(lambda: settled(container), 10.0, "every message acknowledged")

    assert await purchased(container, ref) == 8
    assert consumer.counts["applied"] == 1
    assert await dead_letters_of(container).entries() == []


async def test_a_failure_that_persists_is_dead_lettered_after_max_deliver_deliveries(
    container: Container, nats_server: Nats
) -> None:
    ref = await new_batch(container)
    faults = fail_to_commit(container, times=100)
    await send(container, nats_server, {"batchref": ref, "qty": 4})

    async with consuming(container) as consumer:
        await eventually(lambda: consumer.counts["dead_lettered"] == 1, 15.0, "the dead letter")
        await eventually(lambda: settled(container), 10.0, "the message acknowledged")
    container.uow.reset_override()

    # One unit of work per delivery: the consumer adds no retries of its own.
    assert faults.struck == MAX_DELIVER
    [letter] = await dead_letters_of(container).entries()
    assert (letter.reason, letter.attempts, letter.error_type) == (
        "failed",
        MAX_DELIVER,
        "InjectedFault",
    )
    assert consumer.counts["tried_again"] == MAX_DELIVER - 1
    assert await purchased(container, ref) == 10  # nothing of it committed


async def test_dead_letters_on_jetstream_are_listed_replayed_and_dropped(
    container: Container, nats_server: Nats, capsys: pytest.CaptureFixture[str]
) -> None:
    dead_letters = dead_letters_of(container)
    missing, other = random_ref("later"), random_ref("never")
    await send(
        container, nats_server, {"batchref": missing, "qty": 6}, {"batchref": other, "qty": 1}
    )
    async with consuming(container):
        await eventually(lambda: settled(container), 15.0, "every message acknowledged")
    first, second = await dead_letters.entries()

    assert await dead_letter_commands.show(dead_letters, as_json=False) == 0
    listed = capsys.readouterr().out
    assert first.id in listed
    assert second.id in listed
    assert f"2 dead letters on {dead_letters.key}" in listed

    # The batch exists now: the replay applies the letter, and takes it off.
    await container.bus().handle(commands.CreateBatch(missing, random_ref("sku"), 10, None))
    policy = policy_of(container, dead_letters)
    assert await dead_letter_commands.replay(dead_letters, policy, first.id) == 0
    assert await purchased(container, missing) == 6
    assert [d.id for d in await dead_letters.entries()] == [second.id]

    assert await dead_letter_commands.drop(dead_letters, second.id) == 0
    assert await dead_letters.entries() == []
    assert await dead_letter_commands.drop(dead_letters, second.id) == 1


async def test_of_two_replays_of_one_letter_only_one_applies_it(
    container: Container, nats_server: Nats
) -> None:
    dead_letters = dead_letters_of(container)
    ref = random_ref("later")
    await send(container, nats_server, {"batchref": ref, "qty": 6})
    async with consuming(container):
        await eventually(lambda: settled(container), 15.0, "the message acknowledged")
    [letter] = await dead_letters.entries()
    await container.bus().handle(commands.CreateBatch(ref, random_ref("sku"), 10, None))
    one, other = policy_of(container, dead_letters), policy_of(container, dead_letters)

    codes = await asyncio.gather(
        dead_letter_commands.replay(dead_letters, one, letter.id),
        dead_letter_commands.replay(dead_letters, other, letter.id),
    )

    assert sorted(codes) == [0, 1]
    assert one.counts["applied"] + other.counts["applied"] == 1
    assert await dead_letters.entries() == []


async def allocate(container: Container) -> OutboxRow:
    """A line allocated: its Allocated event's outbox row, not delivered yet."""
    sku = random_ref("sku")
    await container.bus().handle(commands.CreateBatch(random_ref("batch"), sku, 10, None))
    orderid = random_ref("order")
    await container.bus().handle(commands.Allocate(orderid, sku, 2))
    return await allocated_row(container.engine(), orderid)


async def test_line_allocated_is_published_once_though_delivered_twice(
    container: Container, nats_server: Nats
) -> None:
    event = await allocate(container)
    orderid = event.payload["orderid"]
    # The relay crashed after its publish, before it marked the event delivered.
    await container.publisher().publish(
        "line_allocated", {"orderid": orderid, "event_id": event.id}
    )
    await deliver_until_delivered(container, [event.id])

    mine = [m for m in await nats_server.messages("line_allocated") if m["event_id"] == event.id]
    assert len(mine) == 1, mine
    assert mine[0]["orderid"] == orderid


async def test_a_stream_an_operator_made_is_used_as_it_is(
    container: Container, nats_server: Nats
) -> None:
    async with nats_server.client() as client:
        js = client.jetstream()
        await js.add_stream(StreamConfig(name="OPS_EVENTS", subjects=["line_allocated", "ops.>"]))
    event = await allocate(container)
    await deliver_until_delivered(container, [event.id])

    async with nats_server.client() as client:
        js = client.jetstream()
        info = await js.stream_info("OPS_EVENTS")
        names = [s.config.name for s in await js.streams_info()]
    assert info.state.messages == 1
    assert "LINE_ALLOCATED" not in names


async def test_metrics_show_the_consumers_pending_and_redelivered_counts(
    container: Container, nats_server: Nats
) -> None:
    ref = await new_batch(container)
    await send(container, nats_server, *({"batchref": ref, "qty": n} for n in (3, 2, 1)))
    jetstream = container.jetstream()
    assert jetstream is not None
    js = await jetstream.context()
    durable = container.settings().nats_durable
    config = durable_config(durable, container.settings().nats_ack_wait)
    stream = await jetstream.stream_for(SUBJECT)
    subscription = await js.pull_subscribe(SUBJECT, durable=durable, stream=stream, config=config)
    # A message handed back, and taken again: held, with what came before it.
    [first] = await subscription.fetch(1, timeout=5)
    await first.nak()
    held: list[Msg] = []
    while not any(m.metadata.num_delivered == 2 for m in held):
        held += await subscription.fetch(1, timeout=5)

    await gauges.jetstream(jetstream, durable)

    labels = (SUBJECT, durable)
    assert JETSTREAM_PENDING.labels(*labels)._value.get() == 3 - len(held)
    assert JETSTREAM_ACK_PENDING.labels(*labels)._value.get() == len(held)
    assert JETSTREAM_REDELIVERED.labels(*labels)._value.get() == 1
    assert backlogs(container).jetstream is jetstream


async def test_an_outage_is_logged_once_and_the_consumer_goes_on_after_it(
    container: Container, nats_server: Nats, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    ref = await new_batch(container)
    async with consuming(container) as consumer:
        [node] = nats_server.nodes
        await node.stop()
        await eventually(lambda: not consumer.ready.is_set(), 15.0, "the outage noticed")
        await node.start()
        await nats_server.ready()
        await send(container, nats_server, {"batchref": ref, "qty": 9})
        await eventually(lambda: consumer.counts["applied"] == 1, 20.0, "the change applied")

    # One line for the outage, not one per failed attempt (there were several). On
    # a loaded machine the node may answer, then time out once more while its
    # JetStream recovers: that is a second, short outage, and a second line.
    outages = [r for r in caplog.records if r.getMessage().startswith("nats unavailable")]
    assert 1 <= len(outages) <= 2, [r.getMessage() for r in outages]
    assert await purchased(container, ref) == 9


async def test_with_nats_away_at_the_start_events_wait_in_the_outbox_until_it_is_back(
    container: Container, nats_server: Nats
) -> None:
    [node] = nats_server.nodes
    await node.stop()
    event = await allocate(container)

    await container.delivery().deliver_due()  # refused: NATS is away

    assert (await allocated_row(container.engine(), event.payload["orderid"])).pending
    await node.start()
    await nats_server.ready()
    await deliver_until_delivered(container, [event.id], within=30)

    # A node just restarted may take a moment to answer for its streams.
    async def published() -> list[str]:
        return [m["event_id"] for m in await nats_server.messages("line_allocated")]

    async def stored() -> bool:
        return bool(await published())

    await eventually(stored, 10, nats_server.report)
    assert await published() == [event.id]


@pytest.mark.redis
async def test_with_both_brokers_every_allocation_goes_to_each(
    database_url: str, nats_server: Nats, redis_server: RedisServer
) -> None:
    settings = Settings(
        database_url=database_url,
        redis_url=redis_server.url,
        nats_url=nats_server.url,
        event_brokers="redis,nats",
        relay_enabled=False,
    )
    async with running_container(settings) as both:
        event = await allocate(both)
        await deliver_until_delivered(both, [event.id])
        redis = both.redis()
        assert redis is not None
        entries: Any = await redis.xrange("line_allocated")

    on_redis = [fields[b"event_id"].decode() for _, fields in entries]
    on_nats = [m["event_id"] for m in await nats_server.messages("line_allocated")]
    assert on_redis == on_nats == [event.id]
