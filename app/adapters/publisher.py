"""Publishing events to other services: the port and its adapters."""

import abc
import json
import logging
from typing import Any

from redis.asyncio import Redis

logger = logging.getLogger(__name__)


class AbstractPublisher(abc.ABC):
    @abc.abstractmethod
    async def publish(self, channel: str, payload: dict[str, Any]) -> None: ...


class RedisPublisher(AbstractPublisher):
    def __init__(self, client: Redis) -> None:
        self._client = client

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        await self._client.publish(channel, json.dumps(payload))


class NoPublisher(AbstractPublisher):
    """External events are off (no REDIS_URL): nothing leaves the service."""

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        logger.debug("external events off; not publishing %s %s", channel, payload)
