"""A consumer on a real Redis and database, with a dead-letter list of the test's own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from app.adapters.dead_letters import AbstractDeadLetters, DeadLetter
from app.backoff import Backoff
from app.config import Settings
from app.container import Container
from app.entrypoints.messaging.policy import MessagePolicy
from app.entrypoints.messaging.redis_transport import PubSubConsumer
from tests.support.containers import running_container

ATTEMPTS = 3


@dataclass
class Service:
    container: Container
    dead_letters: AbstractDeadLetters
    consumer: PubSubConsumer

    def another_consumer(self) -> PubSubConsumer:
        """A second consumer on the same list: another operator's, say."""
        return consumer_of(self.container, self.dead_letters)

    async def dead_letter(self, data: bytes | str) -> DeadLetter:
        """Handle a message that must fail; the entry it left."""
        outcome = await self.consumer.handle(data)
        assert outcome.dead_letter is not None, f"{data!r} was applied"
        assert outcome.kept
        return outcome.dead_letter


# Tries a few milliseconds apart.
QUICK = Backoff(base=0.001, maximum=0.01)


def policy_of(container: Container, dead_letters: AbstractDeadLetters) -> MessagePolicy:
    return MessagePolicy(container.bus, dead_letters, QUICK, tries=ATTEMPTS)


def consumer_of(container: Container, dead_letters: AbstractDeadLetters) -> PubSubConsumer:
    client = container.redis()
    assert client is not None
    return PubSubConsumer(client, policy_of(container, dead_letters))


@asynccontextmanager
async def running_service(
    database_url: str, redis_url: str, key: str | None = None
) -> AsyncIterator[Service]:
    """The container on these servers; a dead-letter list of its own, unless ``key``.

    Its own list is deleted on leaving.
    """
    own = key is None
    key = key or f"test:dead-letters:{uuid.uuid4().hex}"
    settings = Settings(
        database_url=database_url, redis_url=redis_url, dead_letter_key=key, relay_enabled=False
    )
    async with running_container(settings) as container:
        dead_letters = container.dead_letters()
        assert dead_letters is not None
        try:
            yield Service(container, dead_letters, consumer_of(container, dead_letters))
        finally:
            client = container.redis()
            if own and client is not None:
                await client.delete(key)
