"""The JetStream transport of ``change_batch_quantity``: a durable pull consumer.

Every worker pulls from one durable consumer (NATS_DURABLE) of the stream
holding the subject, so each message goes to one of them. A message is
acknowledged once the policy has settled it (applied and committed, skipped,
or dead-lettered); one left unacknowledged (its worker died) comes back
after NATS_ACK_WAIT. Each delivery is one try, JetStream counting them: a
failure with tries left is handed back for a redelivery after the
policy's ``backoff``, and the NATS_MAX_DELIVER-th is dead-lettered. A
message's position is when the stream stored it (its own timestamp), so a
redelivered change does not overwrite one sent after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from app import outages, tracing
from app.adapters.jetstream import FAILURES, JetStream, NatsUnavailable
from app.clock import Position
from app.entrypoints.messaging.policy import MessagePolicy, Received, log_counts
from app.wire import CHANGE_BATCH_QUANTITY

logger = logging.getLogger(__name__)

FETCH_WAIT = 1.0  # seconds a pull waits for messages; the stop is seen within it


def position(message: Msg) -> Position:
    """When the stream stored ``message``: its timestamp, to the nanosecond."""
    tokens = Msg.Metadata._get_metadata_fields(message.reply)
    # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>, or with a domain.
    nanoseconds = int(tokens[7] if len(tokens) == 9 else tokens[Msg.Ack.Timestamp])
    return nanoseconds // 1_000_000, nanoseconds % 1_000_000


def durable_config(durable: str, ack_wait: float) -> ConsumerConfig:
    """The durable consumer the service makes when it is not there (else it is used as it is)."""
    return ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait,
        # The policy counts the tries and dead-letters the last: the server
        # delivers a message again until it is settled.
        max_deliver=-1,
    )


class JetStreamConsumer:
    def __init__(
        self,
        jetstream: JetStream,
        policy: MessagePolicy,
        *,
        durable: str,
        ack_wait: float,
        max_deliver: int,
        batch: int = 10,
        reconnect_delay: float = 1.0,
        subject: str = CHANGE_BATCH_QUANTITY,
    ) -> None:
        self.subject = subject
        self._jetstream = jetstream
        self.policy = policy
        self._durable = durable
        self._ack_wait = ack_wait
        self._max_deliver = max_deliver
        self._batch = batch
        self._reconnect_delay = reconnect_delay
        self.source = f"the JetStream subject {self.subject}"
        self.check = "jetstream"  # its name in /ready's checks
        self.ready = asyncio.Event()  # set while it is pulling

    @property
    def counts(self) -> Counter[str]:
        return self.policy.counts

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                with tracing.quiet():  # each message handled goes on in a trace of its own
                    await self._consume(stop)
            except NatsUnavailable:
                self.ready.clear()  # reported by the adapter, once an outage
            except FAILURES as e:
                self.ready.clear()
                self._jetstream.unavailable(e)
            if not stop.is_set():
                self.counts["reconnects"] += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._reconnect_delay)
        log_counts(self.source, self.counts)

    async def _consume(self, stop: asyncio.Event) -> None:
        stream = await self._jetstream.stream_for(self.subject)
        js = await self._jetstream.context()
        subscription = await self._subscribe(js, stream)
        try:
            self.ready.set()
            logger.info("reading %s in stream %s as %s", self.subject, stream, self._durable)
            while not stop.is_set():
                try:
                    messages = await subscription.fetch(self._batch, timeout=FETCH_WAIT)
                except NatsTimeoutError:
                    if not self._jetstream.connected:  # no server: not "nothing came"
                        raise self._jetstream.unavailable(ConnectionError("disconnected")) from None
                    continue
                outages.succeeded("nats")
                for message in messages:
                    if stop.is_set():  # to another worker at once
                        self.counts["handed_back"] += 1
                        await message.nak()
                    else:
                        await self._handle(message)
        finally:
            with contextlib.suppress(*FAILURES):
                await subscription.unsubscribe()

    async def _subscribe(
        self, js: JetStreamContext, stream: str
    ) -> JetStreamContext.PullSubscription:
        config = durable_config(self._durable, self._ack_wait)
        return await js.pull_subscribe(
            self.subject, durable=self._durable, stream=stream, config=config
        )

    async def _handle(self, message: Msg) -> None:
        self.counts["received"] += 1
        metadata = message.metadata
        tries = metadata.num_delivered
        received = Received(
            "nats", metadata.stream, str(metadata.sequence.stream), position(message)
        )
        outcome = await self.policy.handle(
            message.data, received, attempt=tries, last=tries >= self._max_deliver
        )
        if outcome.done:
            await message.ack()
        elif outcome.again:
            await message.nak(delay=self.policy.backoff.after(tries))
        else:  # the dead letter could not be stored: the log has it; try it later
            await message.nak(delay=self._ack_wait)
