"""The dead-letter list: external messages the service gave up on, kept in Redis.

With Redis configured the list is a Redis list (RedisDeadLetters, here);
without, on NATS alone, it is a JetStream stream
(app.adapters.jetstream_dead_letters). Both are the same port.

Each entry is one JSON document in a Redis list, oldest first. The message is
kept whole: as text when it is UTF-8, else base64 (``encoding`` says which).
A stream entry's letter keeps the entry's id too, so that a replay keeps the
entry's place among the batch's changes.
Dropping an entry is one ``LREM`` of its exact JSON. Replaying one first
claims it with a lock of its own (``SET NX`` with an expiry), so of two
operators replaying it at once only one applies it, and leaves it on the
list until it has been applied, or has failed again and its new entry is
stored: a replay killed half-way loses nothing, and once the claim expires
the entry can be replayed again.
"""

from __future__ import annotations

import abc
import base64
import binascii
import json
import logging
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import uuid4

from redis.asyncio import Redis

logger = logging.getLogger(__name__)

MAX_ERROR = 1000  # characters of an error message kept
CLAIM_SECONDS = 300  # a replay's hold on its entry; then another may replay it


def utcnow_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class DeadLetter:
    id: str
    channel: str
    message: str
    encoding: Literal["utf-8", "base64"]
    reason: str  # malformed, unknown_batch or failed
    error_type: str
    error: str
    attempts: int
    failed_at: str  # ISO 8601, UTC
    request_id: str | None
    stream_id: str | None = None  # None: the message came by pub/sub
    # When the change came, ``<ms>-<seq>`` (app.clock): the stream entry's id,
    # or when a pub/sub message was received. A replay keeps the change's place.
    position: str | None = None

    @classmethod
    def of(
        cls,
        channel: str,
        data: bytes | str,
        reason: str,
        error_type: str,
        error: str,
        attempts: int,
        request_id: str | None,
        stream_id: str | None = None,
        position: str | None = None,
    ) -> DeadLetter:
        encoding: Literal["utf-8", "base64"] = "utf-8"
        try:
            text = data if isinstance(data, str) else data.decode("utf-8")
        except UnicodeDecodeError:
            assert isinstance(data, bytes)
            text, encoding = base64.b64encode(data).decode("ascii"), "base64"
        if len(error) > MAX_ERROR:
            error = error[: MAX_ERROR - 3] + "..."
        return cls(
            id=uuid4().hex,
            channel=channel,
            message=text,
            encoding=encoding,
            reason=reason,
            error_type=error_type,
            error=error,
            attempts=attempts,
            failed_at=utcnow_iso(),
            request_id=request_id,
            stream_id=stream_id,
            position=position,
        )

    def again(self, failure: DeadLetter) -> DeadLetter:
        """This entry, failed once more: ``failure``'s error, the attempts added up."""
        return replace(failure, id=self.id, attempts=self.attempts + failure.attempts)

    def raw(self) -> bytes:
        """The message exactly as it was received."""
        if self.encoding == "base64":
            return base64.b64decode(self.message)
        return self.message.encode("utf-8")

    def preview(self, width: int = 60) -> str:
        text = self.message if self.encoding == "utf-8" else f"base64:{self.message}"
        text = text.replace("\n", "\\n")
        return text if len(text) <= width else text[: width - 3] + "..."

    def as_dict(self) -> dict[str, Any]:
        fields = asdict(self)
        fields["error"] = {"type": fields.pop("error_type"), "message": fields["error"]}
        for name in ("stream_id", "position"):  # absent rather than null, as before them
            if fields[name] is None:
                del fields[name]
        return fields

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: bytes | str) -> DeadLetter:
        """ValueError unless ``text`` is an entry of the list."""
        try:
            fields = json.loads(text)
            error = fields.pop("error")
            letter = cls(**fields, error_type=str(error["type"]), error=str(error["message"]))
            letter.raw()
        except (TypeError, KeyError, AttributeError, UnicodeError, binascii.Error) as e:
            raise ValueError(f"not a dead letter: {e}") from e
        return letter


@dataclass(frozen=True)
class Claim:
    letter: DeadLetter
    raw: bytes | str | int  # the entry exactly as stored, or its place, to remove it by
    lock: str


class AbstractDeadLetters(abc.ABC):
    key: str  # where the list is, for the operator

    @abc.abstractmethod
    async def add(self, letter: DeadLetter) -> None: ...

    @abc.abstractmethod
    async def entries(self) -> list[DeadLetter]: ...

    @abc.abstractmethod
    async def take(self, letter_id: str) -> DeadLetter | None:
        """Remove the entry and return it; None if it is not there (or just taken)."""

    @abc.abstractmethod
    async def claim(self, letter_id: str) -> Claim | None:
        """Lock the entry for a replay; None if it is not there or already claimed."""

    @abc.abstractmethod
    async def settle(self, claim: Claim) -> None:
        """The claimed entry is dealt with (applied, or stored again): take it off."""

    @abc.abstractmethod
    async def clear(self) -> int:
        """Remove every entry; how many there were."""


class RedisDeadLetters(AbstractDeadLetters):
    def __init__(self, client: Redis, key: str) -> None:
        self._client = client
        self.key = key

    async def add(self, letter: DeadLetter) -> None:
        await self._client.rpush(self.key, letter.to_json())

    async def entries(self) -> list[DeadLetter]:
        return [letter for _, letter in await self._stored()]

    async def take(self, letter_id: str) -> DeadLetter | None:
        for raw, letter in await self._stored():
            if letter.id == letter_id:
                # The exact bytes stored (redis-py's annotation says str; it sends bytes as is).
                removed = await self._client.lrem(self.key, 1, raw)  # type: ignore[arg-type, unused-ignore]
                return letter if removed else None
        return None

    async def claim(self, letter_id: str) -> Claim | None:
        for raw, letter in await self._stored():
            if letter.id == letter_id:
                lock = f"{self.key}:replaying:{letter_id}"
                if not await self._client.set(lock, "1", nx=True, ex=CLAIM_SECONDS):
                    return None
                return Claim(letter, raw, lock)
        return None

    async def settle(self, claim: Claim) -> None:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.lrem(self.key, 1, claim.raw)  # type: ignore[arg-type, unused-ignore]
            pipe.delete(claim.lock)
            await pipe.execute()

    async def clear(self) -> int:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.llen(self.key)
            pipe.delete(self.key)
            count, _ = await pipe.execute()
        return int(count)

    async def _stored(self) -> list[tuple[bytes | str, DeadLetter]]:
        stored = await self._client.lrange(self.key, 0, -1)
        letters = []
        for raw in stored:
            try:
                letters.append((raw, DeadLetter.from_json(raw)))
            except ValueError as e:
                logger.warning(
                    "%s holds an entry that is no dead letter (%s): %.200r", self.key, e, raw
                )
        return letters
