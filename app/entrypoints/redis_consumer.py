"""The Redis entrypoint: external ``change_batch_quantity`` messages become commands.

Error policy: a message is applied, or it goes to the dead-letter list
(app.adapters.dead_letters), never dropped.
- A message that does not parse, or names an unknown batch, cannot succeed
  later as it stands: it is dead-lettered at once.
- Any other failure (the database unavailable, a bug) is retried, a bounded
  number of times with backoff, then dead-lettered. Setting a quantity
  again is harmless, so a retry after a commit whose outcome is unknown is too.
- If the dead-letter list cannot be written either, the message is logged in
  full at ERROR.
A lost connection is retried until Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, ValidationError
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from app import correlation, metrics
from app.adapters.dead_letters import DeadLetter, RedisDeadLetters
from app.domain import commands
from app.entrypoints.api.schemas import Identifier, NewQuantity
from app.service_layer.handlers import UnknownBatch
from app.service_layer.messagebus import MessageBus
from app.service_layer.unit_of_work import DatabaseUnavailable

logger = logging.getLogger(__name__)

CHANNEL = "change_batch_quantity"


class ChangeBatchQuantityMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    batchref: Identifier
    qty: NewQuantity


@dataclass(frozen=True)
class Outcome:
    dead_letter: DeadLetter | None = None  # None: applied
    kept: bool = True  # False: the dead-letter list could not be written; the log has it

    @property
    def applied(self) -> bool:
        return self.dead_letter is None


def _error_text(e: Exception) -> str:
    if isinstance(e, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'message'}: {err['msg']}" for err in e.errors()
        )
    return str(e)


class RedisConsumer:
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
        self.subscribed = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._listen(stop)
            except (RedisConnectionError, RedisTimeoutError, OSError) as e:
                self.subscribed.clear()
                self.counts["reconnects"] += 1
                logger.warning("lost Redis (%s); reconnecting", e)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._reconnect_delay)

    async def _listen(self, stop: asyncio.Event) -> None:
        async with self._client.pubsub(ignore_subscribe_messages=True) as pubsub:
            await pubsub.subscribe(CHANNEL)
            self.subscribed.set()
            logger.info("listening on %s", CHANNEL)
            while not stop.is_set():
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
                    await self.handle(message["data"])

    async def handle(self, data: bytes | str, earlier: DeadLetter | None = None) -> Outcome:
        """Apply one message, or dead-letter it; ``earlier``: its entry, when replayed."""
        # Each message is its own piece of work, logged under an id of its own.
        token = correlation.request_id.set(correlation.new_id())
        try:
            return await self._handle(data, earlier)
        finally:
            correlation.request_id.reset(token)

    async def _handle(self, data: bytes | str, earlier: DeadLetter | None) -> Outcome:
        try:
            message = ChangeBatchQuantityMessage.model_validate_json(data)
        except ValidationError as e:
            self.counts["malformed"] += 1
            logger.warning("dead-lettering malformed %s message %.200r: %s", CHANNEL, data, e)
            return await self._dead_letter(data, "malformed", e, 1, earlier)
        command = commands.ChangeBatchQuantity(message.batchref, message.qty)
        retrying = AsyncRetrying(
            retry=retry_if_not_exception_type(UnknownBatch),
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
        except UnknownBatch as e:
            self.counts["unknown_batch"] += 1
            logger.warning("dead-lettering %s message: %s", CHANNEL, e)
            return await self._dead_letter(data, "unknown_batch", e, attempts, earlier)
        except Exception as e:
            self.counts["failed"] += 1
            if isinstance(e, DatabaseUnavailable):  # no bug: no trace
                logger.warning("could not apply %s message %r: %s", CHANNEL, message, e)
            else:
                logger.exception("could not apply %s message %r", CHANNEL, message)
            return await self._dead_letter(data, "failed", e, attempts, earlier)
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
    ) -> Outcome:
        letter = DeadLetter.of(
            CHANNEL,
            data,
            reason,
            type(error).__name__,
            _error_text(error),
            attempts,
            correlation.request_id.get(),
        )
        if earlier is not None:
            letter = earlier.again(letter)
        metrics.DEAD_LETTERS.labels(reason).inc()
        try:
            await self._dead_letters.add(letter)
        except (RedisError, OSError) as e:
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
