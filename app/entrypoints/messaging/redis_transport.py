"""The Redis transports of ``change_batch_quantity``: pub/sub and a stream.

The message comes two ways:
- on the pub/sub channel ``change_batch_quantity``, as the JSON document
  ``{"batchref": ..., "qty": ...}`` (PubSubConsumer), applied as it arrives;
- on the stream ``change_batch_quantity``, as an entry with the fields
  ``batchref`` and ``qty`` (StreamConsumer), read through a consumer group
  that any number of workers share. An entry is acknowledged once it is
  applied, skipped or dead-lettered; one that a dead worker left
  unacknowledged is claimed by a live one after a while (STREAM_CLAIM_IDLE).
  The last entry for a batch wins: its id is its position.

What becomes of each message is app.entrypoints.messaging.policy's; Redis
delivers neither again soon, so each takes its tries at once. A lost
connection is retried until Redis is back. Told to stop, a consumer takes no
more messages, handles those it has received, and logs its counts.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app import outages, tracing
from app.adapters import streams
from app.adapters.dead_letters import DeadLetter
from app.clock import Position, parse_position, position_now, position_text
from app.entrypoints.messaging.policy import MessagePolicy, Outcome, Received, log_counts
from app.wire import CHANGE_BATCH_QUANTITY

logger = logging.getLogger(__name__)

UNSUBSCRIBED_WITHIN = 1.0  # seconds Redis has to confirm UNSUBSCRIBE at stop
# Seconds a consumer told to stop goes on handling what it holds; then it
# hands the rest back (docs/architecture.md), so that the worker stops
# within a container's grace.
HANDLING_GRACE = 2.5
_NUMBER = re.compile(r"-?[0-9]{1,18}")


# A pub/sub message handed to the stream by a worker that was stopping: the
# message as received, and when it was.
HANDED_MESSAGE, HANDED_POSITION = b"message", b"position"


def entry_message(fields: Mapping[bytes, bytes]) -> dict[str, Any]:
    """A stream entry as the message the channel carries, every field kept.

    Fields are text; ``qty`` becomes a number when it is one. A byte that is
    not UTF-8 becomes a lone surrogate (``\\udcNN``): the entry is
    malformed, and its dead letter (the message as JSON) still holds every byte.
    """
    message: dict[str, Any] = {}
    for key, value in fields.items():
        name = key.decode(errors="surrogateescape")
        text = value.decode(errors="surrogateescape")
        message[name] = int(text) if name == "qty" and _NUMBER.fullmatch(text) else text
    return message


class Consumer(abc.ABC):
    """Hands each message it receives to the policy; reconnects when Redis is lost."""

    check = "redis"  # its name in /ready's checks

    def __init__(
        self,
        client: Redis,
        policy: MessagePolicy,
        reconnect_delay: float = 1.0,
        channel: str = CHANGE_BATCH_QUANTITY,
    ) -> None:
        self.channel = channel  # the channel and the stream: the same name (app.wire.Names)
        self.source = channel  # what it reads, for the log
        self._client = client
        self.policy = policy
        self._reconnect_delay = reconnect_delay
        self.ready = asyncio.Event()  # set while it is subscribed, or reading the stream
        self._stop = asyncio.Event()
        self._hand_back_at: float | None = None

    @property
    def counts(self) -> Counter[str]:
        return self.policy.counts

    def _handing_back(self) -> bool:
        """Whether the grace after the stop is over: what is still held goes back."""
        if not self._stop.is_set():
            return False
        now = asyncio.get_running_loop().time()
        if self._hand_back_at is None:
            self._hand_back_at = now + HANDLING_GRACE
        return now >= self._hand_back_at

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        while not stop.is_set():
            try:
                with tracing.quiet():  # each message handled goes on in a trace of its own
                    await self._consume(stop)
            except (RedisConnectionError, RedisTimeoutError, OSError) as e:
                # Logged once an outage, whoever in the process meets it (app.outages).
                self._lost()
                outages.failed("redis", f"{type(e).__name__}: {e}")
            except ResponseError as e:
                if not str(e).startswith("NOGROUP"):
                    raise
                self._lost()
                logger.warning("%s: %s; creating it again", self.source, e)
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._reconnect_delay)
        log_counts(self.source, self.counts)

    @abc.abstractmethod
    async def _consume(self, stop: asyncio.Event) -> None:
        """Receive and handle messages until ``stop``; then handle what was received."""

    def _lost(self) -> None:
        self.ready.clear()
        self.counts["reconnects"] += 1

    def _connected(self) -> None:
        self.ready.set()
        outages.succeeded("redis")

    async def handle(
        self,
        data: bytes | str | Mapping[str, Any],
        earlier: DeadLetter | None = None,
        stream_id: str | None = None,
        position: Position | None = None,
    ) -> Outcome:
        """Apply one message, or dead-letter it (app.entrypoints.messaging.policy).

        ``earlier``: its dead letter, when replayed. ``stream_id``: the id of
        the stream entry it is. ``position``: when the change came (the entry's
        id, or the time a pub/sub message was received).
        """
        destination = self.channel
        received = Received("redis", destination, stream_id, position)
        return await self.policy.handle_now(data, received, earlier)


async def subscribe(client: Redis, channel: str = CHANGE_BATCH_QUANTITY) -> PubSub:
    """A subscription to the channel, confirmed by Redis: from now on no message is missed.

    The worker takes it before anything else (app.entrypoints.messaging.worker), and its
    consumer reads what arrived meanwhile once the service is up.
    """
    pubsub = client.pubsub()
    await pubsub.subscribe(channel)
    # Redis confirms before it sends any message: wait for that, then say so.
    confirmation = await pubsub.get_message(timeout=UNSUBSCRIBED_WITHIN)
    if confirmation is None or confirmation["type"] != "subscribe":
        await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
        raise RedisConnectionError(f"no confirmation of SUBSCRIBE {channel} from Redis")
    logger.info("listening on %s", channel)
    return pubsub


class PubSubConsumer(Consumer):
    """The channel: each message applied as it arrives, by whichever worker is subscribed.

    ``subscribed``: a subscription already taken (``subscribe``), read first.
    """

    check = "redis_pubsub"

    def __init__(self, *args: Any, subscribed: PubSub | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.source = f"the channel {self.channel}"
        self._subscribed = subscribed

    async def _consume(self, stop: asyncio.Event) -> None:
        taken, self._subscribed = self._subscribed, None
        async with taken or self._client.pubsub() as pubsub:
            if taken is None:
                await pubsub.subscribe(self.channel)
                logger.info("listening on %s", self.channel)
            self._connected()
            while not stop.is_set():
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message["type"] == "message":
                    await self._received(message["data"])
            await pubsub.unsubscribe(self.channel)
            await self._drain(pubsub)

    async def _drain(self, pubsub: PubSub) -> None:
        """Handle what arrived before the unsubscribe took effect, or hand it back.

        Redis sends it on the connection ahead of the confirmation, so once
        the confirmation is read nothing received is left unhandled. What is
        still unhandled when the grace is over goes to the stream, whose
        consumers apply it in its place among the batch's changes.
        """
        held: list[tuple[bytes, Position]] = []
        while True:
            message = await pubsub.get_message(timeout=UNSUBSCRIBED_WITHIN)
            if message is None:
                logger.warning("no confirmation of UNSUBSCRIBE %s from Redis", self.channel)
                break
            if message["type"] == "unsubscribe":
                break
            if message["type"] != "message":
                continue
            if held or self._handing_back():
                self.counts["received"] += 1
                held.append((message["data"], position_now()))
            else:
                await self._received(message["data"])
        if held:
            await self._hand_back(held)

    async def _hand_back(self, held: list[tuple[bytes, Position]]) -> None:
        async with self._client.pipeline(transaction=True) as pipe:
            for data, position in held:
                pipe.xadd(
                    self.channel, {HANDED_MESSAGE: data, HANDED_POSITION: position_text(position)}
                )
            await pipe.execute()
        self.counts["handed_back"] += len(held)
        logger.info("handed %d messages of the channel %s to its stream", len(held), self.channel)

    async def _received(self, data: bytes) -> None:
        # A message is as old as its receipt: one received before a change
        # that is applied first does not overwrite it (app.clock).
        position = position_now()
        self.counts["received"] += 1
        await self.handle(data, position=position)


class StreamConsumer(Consumer):
    """The stream, through a consumer group: each entry acknowledged once it is dealt with."""

    check = "redis_stream"

    def __init__(
        self,
        client: Redis,
        policy: MessagePolicy,
        *,
        group: str,
        name: str,
        claim_idle: float,
        batch: int = 10,
        reconnect_delay: float = 1.0,
        channel: str = CHANGE_BATCH_QUANTITY,
    ) -> None:
        super().__init__(client, policy, reconnect_delay, channel)
        self.source = f"the stream {self.channel}"
        self.group = group
        self.name = name
        self._claim_idle_ms = max(1, round(claim_idle * 1000))
        self._batch = batch  # entries read at a time: those in hand at a stop

    async def _consume(self, stop: asyncio.Event) -> None:
        if await streams.create_group(self._client, self.channel, self.group):
            logger.info("created the consumer group %s of the stream %s", self.group, self.channel)
        self._connected()
        logger.info("reading the stream %s in group %s as %s", self.channel, self.group, self.name)
        cursor: Any = "0-0"
        while not stop.is_set():
            cursor, claimed = await self._claim(cursor)
            await self._handle_all(claimed)
            if not stop.is_set():
                await self._handle_all(await self._read())

    async def _claim(self, cursor: Any) -> tuple[Any, list[Any]]:
        """Entries left unacknowledged past the idle time: their consumer is gone or stuck.

        ``cursor`` is where the previous call left off in the group's pending
        entries (``0-0``: from the start).
        """
        answer = await self._client.xautoclaim(
            self.channel, self.group, self.name, self._claim_idle_ms, cursor, count=self._batch
        )
        cursor, entries = answer[0], answer[1]
        if entries:
            self.counts["claimed"] += len(entries)
            logger.info("claimed %d unacknowledged entries of %s", len(entries), self.channel)
        return cursor, entries

    async def _read(self) -> list[Any]:
        answer: Any = await self._client.xreadgroup(
            self.group, self.name, {self.channel: ">"}, count=self._batch, block=1000
        )
        return [entry for _, entries in answer or [] for entry in entries]

    async def _handle_all(self, entries: list[Any]) -> None:
        for n, (entry_id, fields) in enumerate(entries):
            if self._handing_back():
                await self._hand_back_entries([e for e, _ in entries[n:] if e is not None])
                return
            if entry_id is None:  # deleted from the stream while pending
                continue
            self.counts["received"] += 1
            data: bytes | dict[str, Any] = entry_message(fields or {})
            position = parse_position(entry_id)
            if HANDED_MESSAGE in (fields or {}):  # a pub/sub message, as old as its receipt
                data = fields[HANDED_MESSAGE]
                position = parse_position(fields.get(HANDED_POSITION, entry_id))
            outcome = await self.handle(data, stream_id=entry_id.decode(), position=position)
            if outcome.kept:
                await self._client.xack(self.channel, self.group, entry_id)

    async def _hand_back_entries(self, ids: list[Any]) -> None:
        """Unread, as far as the group goes: idle long enough for the next claim to take."""
        if ids:
            await self._client.xclaim(
                self.channel, self.group, self.name, 0, ids, idle=self._claim_idle_ms, justid=True
            )
            self.counts["handed_back"] += len(ids)
            logger.info("handed %d entries of %s back to the group", len(ids), self.channel)
