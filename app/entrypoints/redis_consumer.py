"""The Redis entrypoint: external ``change_batch_quantity`` messages become commands.

A message that does not parse, or names an unknown batch, is logged and
counted and the consumer goes on. A lost connection is retried until Redis
is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, ValidationError
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app import correlation
from app.domain import commands
from app.entrypoints.api.schemas import Identifier, NewQuantity
from app.service_layer.handlers import UnknownBatch
from app.service_layer.messagebus import MessageBus

logger = logging.getLogger(__name__)

CHANNEL = "change_batch_quantity"


class ChangeBatchQuantityMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    batchref: Identifier
    qty: NewQuantity


class RedisConsumer:
    def __init__(
        self, client: Redis, bus_factory: Callable[[], MessageBus], reconnect_delay: float = 1.0
    ) -> None:
        self._client = client
        self._bus_factory = bus_factory
        self._reconnect_delay = reconnect_delay
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

    async def handle(self, data: bytes | str) -> None:
        # Each message is its own piece of work, logged under an id of its own.
        token = correlation.request_id.set(correlation.new_id())
        try:
            await self._handle(data)
        finally:
            correlation.request_id.reset(token)

    async def _handle(self, data: bytes | str) -> None:
        try:
            message = ChangeBatchQuantityMessage.model_validate_json(data)
        except ValidationError as e:
            self.counts["malformed"] += 1
            logger.warning("ignoring malformed %s message %.200r: %s", CHANNEL, data, e)
            return
        try:
            await self._bus_factory().handle(
                commands.ChangeBatchQuantity(message.batchref, message.qty)
            )
        except UnknownBatch as e:
            self.counts["unknown_batch"] += 1
            logger.warning("ignoring %s message: %s", CHANNEL, e)
        except Exception:
            self.counts["failed"] += 1
            logger.exception("could not apply %s message %r", CHANNEL, message)
        else:
            self.counts["applied"] += 1
