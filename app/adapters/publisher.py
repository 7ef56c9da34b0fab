"""Publishing events to other services: the port and its adapters."""

import abc
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app import outages, tracing
from app.adapters.jetstream import FAILURES as NATS_FAILURES
from app.adapters.jetstream import JetStream
from app.adapters.unavailable import BrokerUnavailable
from app.wire import Names

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

    def __init__(
        self, client: Redis, names: Names | None = None, streams: Mapping[str, int] | None = None
    ) -> None:
        self._client = client
        self._names = names or Names()
        self._streams = dict(streams or {})

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        maxlen = self._streams.get(channel)
        channel = self._names(channel)
        attributes = _sent("redis", channel, payload)
        with tracing.span(f"publish {channel}", "producer", attributes=attributes):
            # With tracing on, the message carries the context of its sending.
            traceparent = tracing.traceparent()
            if traceparent is not None:
                payload = {**payload, "traceparent": traceparent}
            await self._send(channel, payload, maxlen)

    async def _send(self, channel: str, payload: dict[str, Any], maxlen: int | None) -> None:
        try:
            await self._publish(channel, payload, maxlen)
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            reason = f"{type(e).__name__}: {e}"
            outages.failed("redis", reason)
            raise BrokerUnavailable(reason) from e
        outages.succeeded("redis")

    async def _publish(self, channel: str, payload: dict[str, Any], maxlen: int | None) -> None:
        if maxlen is None:
            await self._client.publish(channel, json.dumps(payload))
            return
        fields = {k: _text(v) for k, v in payload.items()}
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.publish(channel, json.dumps(payload))
            pipe.xadd(channel, fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type, unused-ignore]
            await pipe.execute()


def _text(value: Any) -> str:
    """A stream entry's field: None as empty, lists and objects as JSON."""
    if value is None:
        return ""
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


class JetStreamPublisher(AbstractPublisher):
    """Publishes to the JetStream stream holding the channel's subject, once per event.

    The message is the JSON Redis carries; its ``Nats-Msg-Id`` is the event's
    id, so JetStream drops a re-publish (the relay crashed before it marked
    the event delivered) within the stream's duplicate window. A publish
    returns once the stream has stored it, on a majority of its replicas.
    """

    def __init__(self, jetstream: JetStream, names: Names | None = None) -> None:
        self._jetstream = jetstream
        self._names = names or Names()

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        channel = self._names(channel)
        attributes = _sent("nats", channel, payload)
        with tracing.span(f"publish {channel}", "producer", attributes=attributes):
            traceparent = tracing.traceparent()
            if traceparent is not None:
                payload = {**payload, "traceparent": traceparent}
            headers = {"Nats-Msg-Id": str(payload["event_id"])} if payload.get("event_id") else None
            try:
                stream = await self._jetstream.stream_for(channel)
                js = await self._jetstream.context()
                await js.publish(
                    channel, json.dumps(payload).encode(), stream=stream, headers=headers
                )
            except NATS_FAILURES as e:
                raise self._jetstream.unavailable(e) from e
            outages.succeeded("nats")


class FanoutPublisher(AbstractPublisher):
    """Publishes to each broker in turn (EVENT_BROKERS=redis,nats).

    One that fails fails the publish, which the outbox makes again: the
    other broker may then carry the event twice, as at-least-once allows
    (JetStream drops its second copy by the event id).
    """

    def __init__(self, publishers: Sequence[AbstractPublisher]) -> None:
        self._publishers = list(publishers)

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        for publisher in self._publishers:
            await publisher.publish(channel, payload)


def _sent(system: str, channel: str, payload: dict[str, Any]) -> dict[str, str | int]:
    """The messaging conventions' attributes of a publish."""
    attributes: dict[str, str | int] = {
        "messaging.system": system,
        "messaging.destination.name": channel,
        "messaging.operation.type": "send",
    }
    if payload.get("event_id"):
        attributes["messaging.message.id"] = str(payload["event_id"])
    return attributes


class NoPublisher(AbstractPublisher):
    """External events are off (no REDIS_URL nor NATS_URL): nothing leaves the service."""

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        logger.debug("external events off; not publishing %s %s", channel, payload)
