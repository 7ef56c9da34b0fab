"""Redis pub/sub as a test sees it: every message of a channel, from subscription on."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from tests.support.polling import eventually


class Subscriber:
    """Collects the JSON messages published on one channel, in the background.

    ``async with Subscriber(url, channel) as s``: on entry the subscription is
    confirmed by the server, and from then on nothing published is missed.
    ``received()`` waits for everything published before the call, with no
    waiting for silence: it publishes a token on a barrier channel of its own
    and waits for it, as Redis delivers to one connection in the order it ran
    the publishes. The machine's Redis is shared: callers filter on their ids.
    """

    def __init__(self, redis_url: str, channel: str) -> None:
        self.channel = channel
        self.messages: list[dict[str, Any]] = []
        self._arrivals: dict[int, float] = {}  # id(message) -> time.monotonic() on arrival
        self._barrier = f"test-barrier-{uuid.uuid4().hex}"
        self._tokens: set[str] = set()  # barrier tokens come back
        self._client = Redis.from_url(
            redis_url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5
        )
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Subscriber:
        pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(self.channel, self._barrier)
            confirmed: set[str] = set()

            async def both_confirmed() -> bool:
                message = await pubsub.get_message(timeout=0.1)
                if message is not None and message["type"] == "subscribe":
                    confirmed.add(message["channel"])
                return len(confirmed) == 2

            await eventually(both_confirmed, 10.0, f"the subscription to {self.channel}")
        except BaseException:
            await pubsub.reset()
            await self._client.aclose()
            raise
        self._task = asyncio.create_task(self._collect(pubsub), name=f"subscriber {self.channel}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        await self._client.aclose()

    async def _collect(self, pubsub: PubSub) -> None:
        async with pubsub:  # closed on the way out
            while not self._stop.is_set():
                message = await pubsub.get_message(timeout=0.2)
                if message is None or message["type"] != "message":
                    continue
                if message["channel"] == self._barrier:
                    self._tokens.add(message["data"])
                    continue
                try:
                    data = json.loads(message["data"])
                except ValueError:
                    continue
                if isinstance(data, dict):
                    self.messages.append(data)
                    self._arrivals[id(data)] = time.monotonic()

    async def received(self, within: float = 10.0) -> list[dict[str, Any]]:
        """Every message published on the channel before this call."""
        assert self._task is not None, "subscriber not entered"
        token = uuid.uuid4().hex
        await self._client.publish(self._barrier, token)

        def token_back() -> bool:
            assert self._task is not None
            assert not self._task.done(), f"subscriber to {self.channel} stopped"
            return token in self._tokens

        await eventually(token_back, within, f"the barrier on {self.channel}")
        return list(self.messages)

    def arrival(self, message: dict[str, Any]) -> float:
        """When ``message`` (one of ``messages``) arrived, in ``time.monotonic()`` seconds."""
        return self._arrivals[id(message)]

    def where(self, **fields: Any) -> list[dict[str, Any]]:
        return [m for m in self.messages if all(m.get(k) == v for k, v in fields.items())]

    def about(self, skus: set[str]) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("sku") in skus]
