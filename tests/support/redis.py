"""Redis pub/sub, read by a test in order, up to a barrier."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from tests.support.polling import eventually


class Subscriber:
    """What is published on one channel, read in order up to a barrier.

    ``received()`` publishes a token on a channel of its own, on another
    connection, and reads until the token comes back: Redis delivers to one
    subscriber connection in the order it ran the publishes, so whatever was
    published before the call has arrived by then. No waiting for silence.
    """

    def __init__(self, client: Redis, pubsub: PubSub, channel: str, barrier: str) -> None:
        self._client = client
        self._pubsub = pubsub
        self._channel = channel
        self._barrier = barrier
        self.messages: list[dict[str, Any]] = []

    async def received(self, within: float = 10.0) -> list[dict[str, Any]]:
        """Every message published on the channel before this call, decoded."""
        token = uuid.uuid4().hex.encode()
        await self._client.publish(self._barrier, token)
        barrier = self._barrier.encode()
        seen = False

        async def token_back() -> bool:
            nonlocal seen
            while not seen:
                message = await self._pubsub.get_message(timeout=0.1)
                if message is None:
                    return False
                if message["type"] != "message":
                    continue
                if message["channel"] == barrier:
                    seen = message["data"] == token
                else:
                    self.messages.append(json.loads(message["data"]))
            return True

        await eventually(token_back, within, f"the barrier on {self._channel}")
        return list(self.messages)


@asynccontextmanager
async def subscribe(url: str, channel: str) -> AsyncIterator[Subscriber]:
    """A subscriber to ``channel``, its subscription confirmed by the server."""
    barrier = f"test-barrier-{uuid.uuid4().hex}"
    client = Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    async with client, client.pubsub() as pubsub:
        await pubsub.subscribe(channel, barrier)
        confirmed: set[bytes] = set()

        async def both_confirmed() -> bool:
            message = await pubsub.get_message(timeout=0.1)
            if message is not None and message["type"] == "subscribe":
                confirmed.add(message["channel"])
            return len(confirmed) == 2

        await eventually(both_confirmed, 10.0, f"the subscription to {channel}")
        yield Subscriber(client, pubsub, channel, barrier)
