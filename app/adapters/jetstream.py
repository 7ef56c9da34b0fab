"""NATS JetStream: one connection per process, the service's streams, and their state.

The connection is made when first used, not when built, and kept: nats-py
reconnects on its own, to any server of the cluster, and a publish made
meanwhile waits for it. An outage is told once (app.outages), not per
message. A stream is looked up by the subject it holds, so one an operator
made is used as it is; none holding it, the service creates one
(``replicas`` from NATS_STREAM_REPLICAS).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from app import outages
from app.adapters.unavailable import BrokerUnavailable

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT = 5.0  # seconds JetStream has to answer a request, a publish's included
CONNECT_WITHIN = 5.0  # seconds a first connection may take, whichever server answers
# What a failed request to NATS may raise: nats-py's errors, and the socket's.
FAILURES = (NatsError, OSError, asyncio.TimeoutError)


class NatsUnavailable(BrokerUnavailable):
    dependency = "nats"


def stream_name(subject: str) -> str:
    """The name the service gives the stream it creates for ``subject``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", subject).upper()


@dataclass(frozen=True)
class StreamSpec:
    """How a stream the service creates is made."""

    retention: RetentionPolicy = RetentionPolicy.LIMITS
    max_msgs: int = -1


class JetStream:
    def __init__(
        self,
        servers: list[str],
        replicas: int = 1,
        duplicate_window: float = 120.0,
        specs: dict[str, StreamSpec] | None = None,
        name: str = "allocation",
    ) -> None:
        self.servers = servers
        self.replicas = replicas
        self._duplicate_window = duplicate_window
        self._specs = specs or {}
        self._name = name
        self._client: Client | None = None
        self._closing = False
        self._connecting = asyncio.Lock()
        self._streams: dict[str, str] = {}

    async def context(self) -> JetStreamContext:
        """The JetStream API; connects on first use. NatsUnavailable if no server answers."""
        if self._client is None:
            async with self._connecting:
                if self._client is None:
                    self._client = await self._connect()
        return self._client.jetstream(timeout=REQUEST_TIMEOUT)

    async def _connect(self) -> Client:
        # nats-py would try the servers for ever (max_reconnect_attempts=-1 is
        # for reconnecting): a first connection gets CONNECT_WITHIN, then the
        # caller is told NATS is unavailable, and the next use tries again.
        try:
            async with asyncio.timeout(CONNECT_WITHIN):
                client = await self._open()
        except FAILURES as e:
            raise self.unavailable(e) from e
        outages.succeeded("nats")
        url = client.connected_url
        logger.info("connected to NATS at %s", url.netloc if url is not None else "?")
        return client

    async def _open(self) -> Client:
        return await nats.connect(
            servers=self.servers,
            name=self._name,
            connect_timeout=2,
            reconnect_time_wait=0.5,
            max_reconnect_attempts=-1,
            error_cb=self._error,
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
        )

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected

    def unavailable(self, error: BaseException) -> NatsUnavailable:
        """``error``, met using NATS, reported as an outage (logged once) and raised as this."""
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        outages.failed("nats", reason)
        return NatsUnavailable(reason)

    async def _error(self, error: Exception) -> None:
        # nats-py reports each failed try at reconnecting: the outage is logged once.
        outages.failed("nats", f"{type(error).__name__}: {error}")

    async def _disconnected(self) -> None:
        if not self._closing:  # closing disconnects too
            outages.failed("nats", "disconnected")

    async def _reconnected(self) -> None:
        client = self._client
        url = client.connected_url if client is not None else None
        logger.info("reconnected to NATS at %s", url.netloc if url is not None else "?")
        outages.succeeded("nats")

    async def stream_for(self, subject: str) -> str:
        """The stream holding ``subject``: found by subject, or created."""
        known = self._streams.get(subject)
        if known is not None:
            return known
        js = await self.context()
        try:
            name = await js.find_stream_name_by_subject(subject)
        except NotFoundError:
            name = await self._create(js, subject)
        self._streams[subject] = name
        return name

    async def _create(self, js: JetStreamContext, subject: str) -> str:
        spec = self._specs.get(subject, StreamSpec())
        name = stream_name(subject)
        await js.add_stream(
            StreamConfig(
                name=name,
                subjects=[subject],
                retention=spec.retention,
                max_msgs=spec.max_msgs,
                storage=StorageType.FILE,
                num_replicas=self.replicas,
                duplicate_window=self._duplicate_window,
            )
        )
        logger.info(
            "created the JetStream stream %s for %s (%d replicas)", name, subject, self.replicas
        )
        return name

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and not client.is_closed:
            self._closing = True
            await client.close()


async def resource(
    servers: list[str],
    replicas: int,
    duplicate_window: float,
    specs: dict[str, StreamSpec],
) -> AsyncIterator[JetStream | None]:
    """JetStream for ``servers`` as long as it is needed, or None without any."""
    if not servers:
        yield None
        return
    jetstream = JetStream(servers, replicas, duplicate_window, specs)
    try:
        yield jetstream
    finally:
        await jetstream.close()


@dataclass(frozen=True)
class ConsumerStats:
    pending: int  # in the stream, not delivered to the consumer yet
    ack_pending: int  # delivered, not acknowledged yet
    redelivered: int  # delivered more than once, not acknowledged yet


async def consumer_stats(jetstream: JetStream, subject: str, durable: str) -> ConsumerStats | None:
    """The durable consumer's state; None while it does not exist. NatsUnavailable."""
    try:
        js = await jetstream.context()
        stream = await js.find_stream_name_by_subject(subject)
        info = await js.consumer_info(stream, durable)
    except NotFoundError:
        return None
    except FAILURES as e:
        raise jetstream.unavailable(e) from e
    return ConsumerStats(
        info.num_pending or 0, info.num_ack_pending or 0, info.num_redelivered or 0
    )
