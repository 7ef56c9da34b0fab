"""The Redis entrypoints: external ``change_batch_quantity`` messages become commands.

The message comes two ways:
- on the pub/sub channel ``change_batch_quantity``, as the JSON document
  ``{"batchref": ..., "qty": ...}`` (PubSubConsumer), applied as it arrives;
- on the stream ``change_batch_quantity``, as an entry with the fields
  ``batchref`` and ``qty`` (StreamConsumer), read through a consumer group
  that any number of workers share. An entry is acknowledged once it is
  applied, skipped or dead-lettered; one that a dead worker left
  unacknowledged is claimed by a live one after a while (STREAM_CLAIM_IDLE).
  The last entry for a batch wins: applying an entry records its id with
  the batch, in the same transaction, and an older entry (redelivered,
  claimed, replayed) is skipped.

Error policy: a message is applied, or it goes to the dead-letter list
(app.adapters.dead_letters), never dropped.
- A message that does not parse, or names an unknown batch, cannot succeed
  later as it stands: it is dead-lettered at once.
- Any other failure (the database unavailable, a bug) is retried, a bounded
  number of times with backoff, then dead-lettered. Setting a quantity
  again is harmless, so a retry after a commit whose outcome is unknown is too.
- If the dead-letter list cannot be written either, the message is logged in
  full at ERROR (and a stream entry stays unacknowledged, to be claimed again).
A lost connection is retried until Redis is back. Told to stop, a consumer
takes no more messages, handles those it has received, and logs its counts.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from app import correlation, metrics
from app.adapters import streams
from app.adapters.database import DatabaseUnavailable
from app.adapters.dead_letters import DeadLetter, RedisDeadLetters
from app.domain import commands
from app.entrypoints.fields import Identifier, NewQuantity
from app.service_layer.handlers import Superseded, UnknownBatch
from app.service_layer.messagebus import MessageBus

logger = logging.getLogger(__name__)

CHANNEL = "change_batch_quantity"
STREAM = "change_batch_quantity"
UNSUBSCRIBED_WITHIN = 10.0  # seconds Redis has to confirm UNSUBSCRIBE at stop
_NUMBER = re.compile(r"-?[0-9]{1,18}")


class ChangeBatchQuantityMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    batchref: Identifier
    qty: NewQuantity


@dataclass(frozen=True)
class Outcome:
    dead_letter: DeadLetter | None = None  # None: applied, or superseded
    kept: bool = True  # False: the dead-letter list could not be written; the log has it
    superseded: bool = False  # a later entry for the batch was applied already

    @property
    def applied(self) -> bool:
        return self.dead_letter is None and not self.superseded


def entry_message(fields: Mapping[bytes, bytes]) -> str:
    """A stream entry as the JSON message the channel carries, every field kept.

    Fields are text; ``qty`` becomes a number when it is one. A byte that is
    not UTF-8 becomes an escaped lone surrogate (``\\udcNN``): the entry is
    malformed, and its dead letter still holds every byte.
    """
    message: dict[str, Any] = {}
    for key, value in fields.items():
        name = key.decode(errors="surrogateescape")
        text = value.decode(errors="surrogateescape")
        message[name] = int(text) if name == "qty" and _NUMBER.fullmatch(text) else text
    return json.dumps(message)


def _error_text(e: Exception) -> str:
    if isinstance(e, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'message'}: {err['msg']}" for err in e.errors()
        )
    return str(e)


class Consumer(abc.ABC):
    """Applies each message it receives, or dead-letters it; reconnects when Redis is lost."""

    source = CHANNEL  # what it reads, for the log

    def __init__(
        self,
        client: Redis,
        bus_factory: Callable[[], MessageBus],
        dead_letters: RedisDeadLetters,
        reconnect_delay: float = 1.0,
        attempts: int = 3,
        backoff: float = 0.5,
    ) -> None:
        self._client = client
        self._bus_factory = bus_factory
        self._dead_letters = dead_letters
        self._reconnect_delay = reconnect_delay
        self._attempts = attempts
        self._backoff = backoff  # seconds before the second attempt; doubles after
        self.counts: Counter[str] = Counter()
        self.ready = asyncio.Event()  # set while it is subscribed, or reading the stream

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._consume(stop)
            except (RedisConnectionError, RedisTimeoutError, OSError) as e:
                self._lost(f"lost Redis ({e}); reconnecting")
            except ResponseError as e:
                if not str(e).startswith("NOGROUP"):
                    raise
                self._lost(f"{e}; creating it again")
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._reconnect_delay)
        c = self.counts
        logger.info(
            "stopped reading %s: %d received, %d applied, %d superseded, %d dead-lettered, "
            "%d that could not be dead-lettered",
            self.source,
            c["received"],
            c["applied"],
            c["superseded"],
            c["dead_lettered"],
            c["unstored"],
        )

    @abc.abstractmethod
    async def _consume(self, stop: asyncio.Event) -> None:
        """Receive and handle messages until ``stop``; then handle what was received."""

    def _lost(self, why: str) -> None:
        self.ready.clear()
        self.counts["reconnects"] += 1
        logger.warning("%s: %s", self.source, why)

    async def handle(
        self, data: bytes | str, earlier: DeadLetter | None = None, stream_id: str | None = None
    ) -> Outcome:
        """Apply one message, or dead-letter it.

        ``earlier``: its dead letter, when replayed. ``stream_id``: the id of
        the stream entry it is (a replayed letter carries its own).
        """
        if earlier is not None:
            stream_id = earlier.stream_id
        # Each message is its own piece of work, logged under an id of its own.
        token = correlation.request_id.set(correlation.new_id())
        try:
            return await self._handle(data, earlier, stream_id)
        finally:
            correlation.request_id.reset(token)

    async def _handle(
        self, data: bytes | str, earlier: DeadLetter | None, stream_id: str | None
    ) -> Outcome:
        def dead_letter(reason: str, error: Exception, attempts: int) -> Awaitable[Outcome]:
            return self._dead_letter(data, reason, error, attempts, earlier, stream_id)

        try:
            message = ChangeBatchQuantityMessage.model_validate_json(data)
        except ValidationError as e:
            self.counts["malformed"] += 1
            logger.warning("dead-lettering malformed %s message %.200r: %s", CHANNEL, data, e)
            return await dead_letter("malformed", e, 1)
        position = None if stream_id is None else streams.position(stream_id)
        command = commands.ChangeBatchQuantity(message.batchref, message.qty, position)
        retrying = AsyncRetrying(
            retry=retry_if_not_exception_type((UnknownBatch, Superseded)),
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=self._backoff, max=30),
            before_sleep=self._log_retry,
            reraise=True,
        )
        attempts = 0
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    await self._bus_factory().handle(command)
        except Superseded as e:
            self.counts["superseded"] += 1
            logger.info("skipping %s entry %s: %s", STREAM, stream_id, e)
            return Outcome(superseded=True)
        except UnknownBatch as e:
            self.counts["unknown_batch"] += 1
            logger.warning("dead-lettering %s message: %s", CHANNEL, e)
            return await dead_letter("unknown_batch", e, attempts)
        except Exception as e:
            self.counts["failed"] += 1
            if isinstance(e, DatabaseUnavailable):  # no bug: no trace
                logger.warning("could not apply %s message %r: %s", CHANNEL, message, e)
            else:
                logger.exception("could not apply %s message %r", CHANNEL, message)
            return await dead_letter("failed", e, attempts)
        self.counts["applied"] += 1
        return Outcome()

    def _log_retry(self, state: RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome else None
        logger.warning(
            "attempt %d of %d at a %s message failed (%s: %s); trying again",
            state.attempt_number,
            self._attempts,
            CHANNEL,
            type(failure).__name__,
            failure,
        )

    async def _dead_letter(
        self,
        data: bytes | str,
        reason: str,
        error: Exception,
        attempts: int,
        earlier: DeadLetter | None,
        stream_id: str | None,
    ) -> Outcome:
        letter = DeadLetter.of(
            CHANNEL,
            data,
            reason,
            type(error).__name__,
            _error_text(error),
            attempts,
            correlation.request_id.get(),
            stream_id,
        )
        if earlier is not None:
            letter = earlier.again(letter)
        metrics.DEAD_LETTERS.labels(reason).inc()
        try:
            await self._dead_letters.add(letter)
        except (RedisError, OSError) as e:
            self.counts["unstored"] += 1
            logger.error(
                "could not write to the dead-letter list %s (%s: %s); the dead letter, in full: %s",
                self._dead_letters.key,
                type(e).__name__,
                e,
                letter.to_json(),
            )
            return Outcome(letter, kept=False)
        self.counts["dead_lettered"] += 1
        logger.info("dead letter %s on %s (%s)", letter.id, self._dead_letters.key, reason)
        return Outcome(letter)


class PubSubConsumer(Consumer):
    """The channel: each message applied as it arrives, by whichever worker is subscribed."""

    source = f"the channel {CHANNEL}"

    @property
    def subscribed(self) -> asyncio.Event:
        return self.ready

    async def _consume(self, stop: asyncio.Event) -> None:
        async with self._client.pubsub() as pubsub:
            await pubsub.subscribe(CHANNEL)
            self.ready.set()
            logger.info("listening on %s", CHANNEL)
            while not stop.is_set():
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message["type"] == "message":
                    await self._received(message["data"])
            await pubsub.unsubscribe(CHANNEL)
            await self._drain(pubsub)

    async def _drain(self, pubsub: PubSub) -> None:
        """Handle what arrived before the unsubscribe took effect.

        Redis sends it on the connection ahead of the confirmation, so once
        the confirmation is read nothing received is left unhandled.
        """
        while True:
            message = await pubsub.get_message(timeout=UNSUBSCRIBED_WITHIN)
            if message is None:
                logger.warning("no confirmation of UNSUBSCRIBE %s from Redis", CHANNEL)
                return
            if message["type"] == "unsubscribe":
                return
            if message["type"] == "message":
                await self._received(message["data"])

    async def _received(self, data: bytes) -> None:
        self.counts["received"] += 1
        await self.handle(data)


class StreamConsumer(Consumer):
    """The stream, through a consumer group: each entry acknowledged once it is dealt with."""

    source = f"the stream {STREAM}"

    def __init__(
        self,
        client: Redis,
        bus_factory: Callable[[], MessageBus],
        dead_letters: RedisDeadLetters,
        *,
        group: str,
        name: str,
        claim_idle: float,
        batch: int = 10,
        reconnect_delay: float = 1.0,
        attempts: int = 3,
        backoff: float = 0.5,
    ) -> None:
        super().__init__(client, bus_factory, dead_letters, reconnect_delay, attempts, backoff)
        self.group = group
        self.name = name
        self._claim_idle_ms = max(1, round(claim_idle * 1000))
        self._batch = batch  # entries read at a time: those in hand at a stop

    async def _consume(self, stop: asyncio.Event) -> None:
        if await streams.create_group(self._client, STREAM, self.group):
            logger.info("created the consumer group %s of the stream %s", self.group, STREAM)
        self.ready.set()
        logger.info("reading the stream %s in group %s as %s", STREAM, self.group, self.name)
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
            STREAM, self.group, self.name, self._claim_idle_ms, cursor, count=self._batch
        )
        cursor, entries = answer[0], answer[1]
        if entries:
            self.counts["claimed"] += len(entries)
            logger.info("claimed %d unacknowledged entries of %s", len(entries), STREAM)
        return cursor, entries

    async def _read(self) -> list[Any]:
        answer: Any = await self._client.xreadgroup(
            self.group, self.name, {STREAM: ">"}, count=self._batch, block=1000
        )
        return [entry for _, entries in answer or [] for entry in entries]

    async def _handle_all(self, entries: list[Any]) -> None:
        for entry_id, fields in entries:
            if entry_id is None:  # deleted from the stream while pending
                continue
            self.counts["received"] += 1
            outcome = await self.handle(entry_message(fields or {}), stream_id=entry_id.decode())
            if outcome.kept:
                await self._client.xack(STREAM, self.group, entry_id)
