"""What becomes of one ``change_batch_quantity`` message, whichever broker brought it.

Parse and validate it (ChangeBatchQuantityMessage), apply it as a command
at its position (when it was sent: a change never overwrites one applied
after it), skip it if superseded, or dead-letter it; the transport then
acknowledges what the outcome says is done. The transports
(app.entrypoints.messaging.redis_transport, app.entrypoints.messaging.jetstream_transport) only
receive, acknowledge and hand back.

Error policy: a message is applied, or it goes to the dead-letter list, never
dropped.
- A message that does not parse, or names an unknown batch, cannot succeed
  later as it stands: it is dead-lettered at once.
- Any other failure (the database unavailable, a bug) is tried again, up to
  the message's budget of tries, then dead-lettered. The bus retries a
  write that collides within one try, with its own budget; a collision it
  gives up on is not tried again here. Setting a quantity again is
  harmless, so a try after a commit whose outcome is unknown is too.
- If the dead-letter list cannot be written either, the message is logged in
  full at ERROR, and the outcome says it was not kept: a transport that can
  leave it unacknowledged does, for a later delivery.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from pydantic import ValidationError
from redis.exceptions import RedisError

from app import correlation, metrics, tracing
from app.adapters.database_errors import ConcurrencyError, DatabaseUnavailable
from app.adapters.dead_letters import AbstractDeadLetters, DeadLetter
from app.adapters.unavailable import Unavailable
from app.backoff import Backoff
from app.clock import Position, parse_position, position_text
from app.domain import commands
from app.service_layer.handlers import Superseded, UnknownBatch
from app.service_layer.messagebus import MessageBus
from app.wire import CHANGE_BATCH_QUANTITY, ChangeBatchQuantityMessage

logger = logging.getLogger(__name__)

CHANNEL = CHANGE_BATCH_QUANTITY
# A message as received: its bytes, or a stream entry's fields.
Message: TypeAlias = bytes | str | Mapping[str, Any]
TRIES = 3  # tries at a message whose failure may pass, when the broker does not count them
# How far apart they are: half a second after the first failure, doubling to 30 s,
# so that a database back within a couple of seconds applies the message.
TRIES_APART = Backoff(base=0.5, maximum=30.0)


@dataclass(frozen=True)
class Received:
    """Where a message came from, as the transport tells it."""

    system: str  # redis or nats
    destination: str  # the channel, stream or subject
    message_id: str | None = None  # a stream entry's id, a JetStream stream sequence
    position: Position | None = None  # when it was sent (None: as of now)


@dataclass(frozen=True)
class Outcome:
    dead_letter: DeadLetter | None = None  # None: applied, superseded, or to be tried again
    kept: bool = True  # False: the dead-letter list could not be written; the log has it
    superseded: bool = False  # a later change for the batch was applied already
    again: bool = False  # failed, with tries left: deliver it again

    @property
    def applied(self) -> bool:
        return self.dead_letter is None and not self.superseded and not self.again

    @property
    def done(self) -> bool:
        """Whether the broker may forget the message: acknowledge it."""
        return self.kept and not self.again


def _error_text(e: Exception) -> str:
    if isinstance(e, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'message'}: {err['msg']}" for err in e.errors()
        )
    return str(e)


class MessagePolicy:
    """Applies a message, skips it, or dead-letters it; counts what it did."""

    def __init__(
        self,
        bus_factory: Callable[[], MessageBus],
        dead_letters: AbstractDeadLetters,
        backoff: Backoff = TRIES_APART,
        tries: int = TRIES,
    ) -> None:
        self._bus_factory = bus_factory
        self.dead_letters = dead_letters
        self.backoff = backoff
        self.tries = tries
        self.counts: Counter[str] = Counter()

    async def handle_now(
        self, data: Message, received: Received, earlier: DeadLetter | None = None
    ) -> Outcome:
        """``handle`` with every try here and now, ``backoff`` apart: for a broker
        that would not deliver the message again (pub/sub, a replay)."""
        for attempt in range(1, self.tries + 1):
            outcome = await self.handle(
                data, received, earlier, attempt, last=attempt == self.tries
            )
            if not outcome.again:
                return outcome
            await asyncio.sleep(self.backoff.after(attempt))
        raise AssertionError("the last try always settles")  # pragma: no cover

    async def handle(
        self,
        data: Message,
        received: Received,
        earlier: DeadLetter | None = None,
        attempt: int = 1,
        last: bool = True,
    ) -> Outcome:
        """One try at one message: ``attempt`` of its tries, the ``last`` one or not.

        ``earlier``: its dead letter, when replayed; the letter's position wins.
        """
        if earlier is not None:
            kept = earlier.position or earlier.stream_id
            position = None if kept is None else parse_position(kept)
            received = Received(received.system, received.destination, earlier.stream_id, position)
        # Each message is its own piece of work, logged under an id of its own.
        token = correlation.request_id.set(correlation.new_id())
        try:
            return await self._handle(data, received, earlier, attempt, last)
        finally:
            correlation.request_id.reset(token)

    async def _handle(
        self,
        data: Message,
        received: Received,
        earlier: DeadLetter | None,
        attempt: int,
        last: bool,
    ) -> Outcome:
        try:
            if isinstance(data, Mapping):  # a stream entry's fields: no JSON to parse
                message = ChangeBatchQuantityMessage.model_validate(data)
            else:
                message = ChangeBatchQuantityMessage.model_validate_json(data)
        except ValidationError as e:
            self.counts["malformed"] += 1
            logger.warning("dead-lettering malformed %s message %.200r: %s", CHANNEL, data, e)
            return await self._dead_letter(data, received, earlier, "malformed", e, attempt)
        command = commands.ChangeBatchQuantity(message.batchref, message.qty, received.position)
        # In the trace of the message's sending, when it says which; else in one of its own.
        with (
            tracing.continued(message.traceparent),
            tracing.span(f"process {CHANNEL}", "consumer", _attributes(received)),
        ):
            try:
                await self._bus_factory().handle(command)
            except Superseded as e:
                self.counts["superseded"] += 1
                logger.info("skipping %s: %s", _which(received), e)
                return Outcome(superseded=True)
            except UnknownBatch as e:
                self.counts["unknown_batch"] += 1
                logger.warning("dead-lettering %s: %s", _which(received), e)
                return await self._dead_letter(data, received, earlier, "unknown_batch", e, attempt)
            except Exception as e:
                return await self._failed(data, message, received, earlier, e, attempt, last)
        self.counts["applied"] += 1
        return Outcome()

    async def _failed(
        self,
        data: Message,
        message: ChangeBatchQuantityMessage,
        received: Received,
        earlier: DeadLetter | None,
        e: Exception,
        attempt: int,
        last: bool,
    ) -> Outcome:
        # The bus spent its own budget on the collisions already.
        if not last and not isinstance(e, ConcurrencyError):
            self.counts["tried_again"] += 1
            logger.warning(
                "try %d at %s failed (%s: %s); trying again",
                attempt,
                _which(received),
                type(e).__name__,
                e,
            )
            return Outcome(again=True)
        if isinstance(e, DatabaseUnavailable):  # no bug: no trace
            logger.warning("could not apply %s %r: %s", _which(received), message, e)
        else:
            logger.exception("could not apply %s %r", _which(received), message)
        self.counts["failed"] += 1
        return await self._dead_letter(data, received, earlier, "failed", e, attempt)

    async def _dead_letter(
        self,
        data: Message,
        received: Received,
        earlier: DeadLetter | None,
        reason: str,
        error: Exception,
        attempts: int,
    ) -> Outcome:
        letter = DeadLetter.of(
            CHANNEL,
            json.dumps(data) if isinstance(data, Mapping) else data,
            reason,
            type(error).__name__,
            _error_text(error),
            attempts,
            correlation.request_id.get(),
            received.message_id,
            None if received.position is None else position_text(received.position),
        )
        if earlier is not None:
            letter = earlier.again(letter)
        metrics.DEAD_LETTERS.labels(reason).inc()
        try:
            await self.dead_letters.add(letter)
        except (RedisError, OSError, Unavailable) as e:
            self.counts["unstored"] += 1
            logger.error(
                "could not write to the dead-letter list %s (%s: %s); the dead letter, in full: %s",
                self.dead_letters.key,
                type(e).__name__,
                e,
                letter.to_json(),
            )
            return Outcome(letter, kept=False)
        self.counts["dead_lettered"] += 1
        logger.info("dead letter %s on %s (%s)", letter.id, self.dead_letters.key, reason)
        return Outcome(letter)


def _which(received: Received) -> str:
    if received.message_id is None:
        return f"a {CHANNEL} message"
    if received.system == "redis":
        return f"{CHANNEL} entry {received.message_id}"
    if received.system == "nats":
        return f"{CHANNEL} message {received.message_id} of the stream {received.destination}"
    return f"{CHANNEL} message {received.message_id}"


def _attributes(received: Received) -> dict[str, str | int]:
    """The messaging conventions' attributes of a message processed."""
    attributes: dict[str, str | int] = {
        "messaging.system": received.system,
        "messaging.destination.name": received.destination,
        "messaging.operation.type": "process",
    }
    if received.message_id:
        attributes["messaging.message.id"] = received.message_id
    return attributes


def log_counts(source: str, c: Counter[str]) -> None:
    logger.info(
        "stopped reading %s: %d received, %d applied, %d superseded, %d dead-lettered, "
        "%d that could not be dead-lettered, %d handed back",
        source,
        c["received"],
        c["applied"],
        c["superseded"],
        c["dead_lettered"],
        c["unstored"],
        c["handed_back"],
    )
