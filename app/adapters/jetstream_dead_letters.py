"""The dead-letter list on NATS alone: a JetStream stream, one letter per message.

Used when REDIS_URL is not set. The stream holds the subject
DEAD_LETTER_KEY (created as ``stream_name(DEAD_LETTER_KEY)`` when no stream
holds it); each message is a letter's JSON, the same document the Redis list
keeps. Dropping or settling a letter deletes its message. A replay's claim
is a key of its own in the key-value bucket ``CLAIMS``, created only if no
key is there; the bucket's keys expire after CLAIM_SECONDS, so a replay
killed half-way frees its letter then, as on Redis.
"""

from __future__ import annotations

import logging

from nats.js.errors import KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from app.adapters.dead_letters import CLAIM_SECONDS, AbstractDeadLetters, Claim, DeadLetter
from app.adapters.jetstream import FAILURES, JetStream

logger = logging.getLogger(__name__)

CLAIMS = "allocation_dead_letter_claims"


class JetStreamDeadLetters(AbstractDeadLetters):
    def __init__(self, jetstream: JetStream, subject: str) -> None:
        self._jetstream = jetstream
        self._subject = subject
        self.key = f"the JetStream subject {subject}"
        self._claims: KeyValue | None = None

    async def add(self, letter: DeadLetter) -> None:
        try:
            stream = await self._jetstream.stream_for(self._subject)
            js = await self._jetstream.context()
            await js.publish(self._subject, letter.to_json().encode(), stream=stream)
        except FAILURES as e:
            raise self._jetstream.unavailable(e) from e

    async def entries(self) -> list[DeadLetter]:
        return [letter for _, letter in await self._stored()]

    async def take(self, letter_id: str) -> DeadLetter | None:
        for seq, letter in await self._stored():
            if letter.id == letter_id:
                return letter if await self._delete(seq) else None
        return None

    async def claim(self, letter_id: str) -> Claim | None:
        for seq, letter in await self._stored():
            if letter.id == letter_id:
                lock = f"replaying.{letter_id}"
                try:
                    claims = await self._claims_bucket()
                    await claims.create(lock, b"1")
                except KeyWrongLastSequenceError:
                    return None  # another replay holds it
                except FAILURES as e:
                    raise self._jetstream.unavailable(e) from e
                return Claim(letter, seq, lock)
        return None

    async def settle(self, claim: Claim) -> None:
        assert isinstance(claim.raw, int)
        await self._delete(claim.raw)
        try:
            await (await self._claims_bucket()).purge(claim.lock)
        except FAILURES as e:
            raise self._jetstream.unavailable(e) from e

    async def clear(self) -> int:
        try:
            stream = await self._jetstream.stream_for(self._subject)
            js = await self._jetstream.context()
            count = (await js.stream_info(stream)).state.messages
            await js.purge_stream(stream, subject=self._subject)
        except FAILURES as e:
            raise self._jetstream.unavailable(e) from e
        return count

    async def _delete(self, seq: int) -> bool:
        try:
            stream = await self._jetstream.stream_for(self._subject)
            js = await self._jetstream.context()
            return await js.delete_msg(stream, seq)
        except NotFoundError:
            return False
        except FAILURES as e:
            raise self._jetstream.unavailable(e) from e

    async def _claims_bucket(self) -> KeyValue:
        if self._claims is None:
            js = await self._jetstream.context()
            try:
                self._claims = await js.key_value(CLAIMS)
            except NotFoundError:
                self._claims = await js.create_key_value(
                    bucket=CLAIMS, ttl=CLAIM_SECONDS, replicas=self._jetstream.replicas
                )
        return self._claims

    async def _stored(self) -> list[tuple[int, DeadLetter]]:
        """Each letter with its stream sequence, oldest first."""
        letters: list[tuple[int, DeadLetter]] = []
        try:
            stream = await self._jetstream.stream_for(self._subject)
            js = await self._jetstream.context()
            seq = 1
            while True:
                try:
                    message = await js.get_msg(stream, seq, subject=self._subject, next=True)
                except NotFoundError:
                    return letters  # past the last
                assert message.seq is not None
                seq = message.seq + 1
                try:
                    letters.append((message.seq, DeadLetter.from_json(message.data or b"")))
                except ValueError as e:
                    logger.warning(
                        "%s holds a message that is no dead letter (%s): %.200r",
                        self.key,
                        e,
                        message.data,
                    )
        except FAILURES as e:
            raise self._jetstream.unavailable(e) from e
