"""Publishing events to other services: the port and its adapters."""

import abc
import json
import logging
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis

logger = logging.getLogger(__name__)


class AbstractPublisher(abc.ABC):
    @abc.abstractmethod
    async def publish(self, channel: str, payload: dict[str, Any]) -> None: ...


class RedisPublisher(AbstractPublisher):
    """Publishes on the channel; for the channels in ``streams``, appends to a stream too.

    The stream has the channel's name and keeps about ``streams[channel]``
    entries: a consumer that starts late reads what it missed, within that.
    An entry's fields are the payload's, as text (None as empty). Both go in
    one MULTI: Redis applies both or neither.
    """

    def __init__(self, client: Redis, streams: Mapping[str, int] | None = None) -> None:
        self._client = client
        self._streams = dict(streams or {})

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        maxlen = self._streams.get(channel)
        if maxlen is None:
            await self._client.publish(channel, json.dumps(payload))
            return
        fields = {k: "" if v is None else str(v) for k, v in payload.items()}
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.publish(channel, json.dumps(payload))
            pipe.xadd(channel, fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
            await pipe.execute()


class NoPublisher(AbstractPublisher):
    """External events are off (no REDIS_URL): nothing leaves the service."""

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        logger.debug("external events off; not publishing %s %s", channel, payload)
