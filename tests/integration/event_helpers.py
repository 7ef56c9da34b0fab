"""Helpers for the tests of event delivery: real servers, the outbox as stored, waiting.

The tests that use these prove that no event is lost when a step fails or a
server is away, so they look at the outbox and the processed-messages ledger
directly, run delivery passes by hand, and start servers of their own to
stop them. Faults are injected by overriding the container's providers
(before it first builds what depends on them): a unit of work that crashes
right after its commit, an after-commit handler that fails after it ran, a
publisher that fails. Nothing here sleeps to wait for something: every wait
polls a condition until a deadline.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from dependency_injector import providers
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app import container as composition
from app.adapters import orm
from app.adapters.publisher import AbstractPublisher
from app.config import Settings
from app.container import Container
from app.domain import events
from app.service_layer.delivery import AfterCommitHandlers, EventHandler
from app.service_layer.unit_of_work import InlineHandlers, SqlAlchemyUnitOfWork
from tests.databases import postgres_database

REDIS_SERVER = "/usr/bin/redis-server"


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 10.0) -> None:
    """Return once ``check()`` holds; fail naming ``what`` if it does not ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


# PostgreSQL: a database of the module's own. The session's shared database
# may have another relay on it (the uvicorn fixture runs one), which would
# claim these tests' due events and deliver them behind their backs.


def private_postgres_database(server_url: str) -> AbstractAsyncContextManager[str]:
    """A migrated database on the server of ``server_url``, dropped on leaving."""
    return postgres_database(server_url)


@asynccontextmanager
async def running_container(settings: Settings) -> AsyncIterator[Container]:
    """The app's container on ``settings``, resources open; no relay runs by itself."""
    container = Container()
    container.settings.override(providers.Object(settings))
    await composition.start(container)
    try:
        yield container
    finally:
        await composition.stop(container)


# The outbox, as stored.


@dataclass(frozen=True)
class OutboxRow:
    id: str
    type: str
    payload: dict[str, Any]
    attempts: int
    last_error: str | None
    available_at: datetime
    completed_at: datetime | None

    @property
    def pending(self) -> bool:
        return self.completed_at is None


async def outbox_rows(engine: AsyncEngine, sku: str, type_: str | None = None) -> list[OutboxRow]:
    """The outbox rows of events about ``sku``, oldest first."""
    o = orm.outbox.c
    query = select(
        o.id, o.type, o.payload, o.attempts, o.last_error, o.available_at, o.completed_at
    ).where(o.sku == sku)
    if type_ is not None:
        query = query.where(o.type == type_)
    async with engine.connect() as conn:
        rows = (await conn.execute(query.order_by(o.created_at, o.id))).all()
    return [OutboxRow(**row._asdict()) for row in rows]


async def allocated_row(engine: AsyncEngine, orderid: str) -> OutboxRow:
    """The outbox row of the Allocated event of ``orderid``."""
    async with engine.connect() as conn:
        sku = await conn.scalar(
            select(orm.order_lines.c.sku).where(orm.order_lines.c.orderid == orderid)
        )
    assert sku is not None, f"order {orderid} has no line"
    rows = [
        r for r in await outbox_rows(engine, sku, "Allocated") if r.payload["orderid"] == orderid
    ]
    assert len(rows) == 1, f"{len(rows)} Allocated events for {orderid}: {rows}"
    return rows[0]


async def handled_by(engine: AsyncEngine, event_id: str) -> set[str]:
    """The handlers the ledger records as done with the event."""
    p = orm.processed_messages.c
    async with engine.connect() as conn:
        return set(await conn.scalars(select(p.handler).where(p.message_id == event_id)))


async def pending_count(engine: AsyncEngine) -> int:
    o = orm.outbox.c
    async with engine.connect() as conn:
        count = await conn.scalar(select(func.count()).where(o.completed_at.is_(None)))
    return int(count or 0)


async def allocated_in_write_model(engine: AsyncEngine, orderid: str, sku: str) -> str | None:
    """The batch the write model (not the read model) has the order's line in."""
    b, line, a = orm.batches.c, orm.order_lines.c, orm.allocations.c
    async with engine.connect() as conn:
        ref: str | None = await conn.scalar(
            select(b.reference)
            .join(orm.allocations, a.batch_id == b.id)
            .join(orm.order_lines, line.id == a.orderline_id)
            .where(line.orderid == orderid, line.sku == sku)
        )
    return ref


async def deliver_until_delivered(
    container: Container, event_ids: list[str], within: float = 15.0
) -> None:
    """Run delivery passes until every one of the events is marked delivered.

    Each pass takes only what is due, so this also waits out the backoff of
    an event whose delivery failed.
    """
    engine: AsyncEngine = container.engine()
    wanted = set(event_ids)

    async def delivered() -> bool:
        await container.delivery().deliver_due()
        o = orm.outbox.c
        async with engine.connect() as conn:
            done = set(
                await conn.scalars(
                    select(o.id).where(o.id.in_(wanted), o.completed_at.is_not(None))
                )
            )
        return done == wanted

    await eventually(delivered, f"delivery of {sorted(wanted)}", within)


# Faults, injected through the container's providers.


class InjectedFault(Exception):
    """A failure the test asked for."""


@dataclass
class Faults:
    """How many more times a fault is to strike; and how often it did."""

    times: int = 1
    struck: int = 0

    def strike(self, what: str) -> None:
        if self.times > 0:
            self.times -= 1
            self.struck += 1
            raise InjectedFault(what)


class CrashesAfterCommit(SqlAlchemyUnitOfWork):
    """Commits, then fails: as a process would that died right after its commit."""

    def __init__(
        self,
        engine: AsyncEngine,
        inline: InlineHandlers | None = None,
        after_commit: Collection[type[events.Event]] = (),
        *,
        faults: Faults,
    ) -> None:
        super().__init__(engine, inline, after_commit)
        self._faults = faults

    async def _commit(self) -> None:
        await super()._commit()
        self._faults.strike("crash after the commit")


def crash_after_commit(container: Container, times: int = 1) -> Faults:
    """The next ``times`` commits of the container's units of work crash right after.

    Every unit of work counts, a delivery pass's too. ``container.uow.reset_override()``
    ends it.
    """
    faults = Faults(times)
    container.uow.override(
        providers.Factory(
            CrashesAfterCommit,
            engine=container.engine,
            inline=container.inline_handlers,
            after_commit=container.after_commit_handlers,
            faults=providers.Object(faults),
        )
    )
    return faults


def fail_after_running(handler: EventHandler, faults: Faults, name: str) -> EventHandler:
    """``handler``, which raises after it ran, as long as ``faults`` says so."""

    async def run_then_fail(event: Any) -> None:
        await handler(event)
        faults.strike(f"{name} failed after it ran")

    return run_then_fail


def failing_after_it_ran(container: Container, name: str, times: int = 1) -> Faults:
    """The after-commit handler ``name`` fails ``times`` times, each after it did its work.

    Call before the container builds delivery or a unit of work.
    """
    faults = Faults(times)
    real = container.after_commit_handlers()
    wrapped = {
        event_type: {
            n: fail_after_running(h, faults, n) if n == name else h for n, h in handlers.items()
        }
        for event_type, handlers in real.items()
    }
    assert any(name in handlers for handlers in wrapped.values()), f"no handler {name}"
    override_after_commit_handlers(container, wrapped)
    return faults


def override_after_commit_handlers(container: Container, handlers: AfterCommitHandlers) -> None:
    """Delivery and the units of work use ``handlers``: before either is built."""
    container.after_commit_handlers.override(providers.Object(handlers))


@dataclass
class FlakyPublisher(AbstractPublisher):
    """The real publisher, but the next ``faults.times`` publishes fail, as while Redis is down."""

    real: AbstractPublisher
    faults: Faults = field(default_factory=Faults)

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        self.faults.strike("publisher down")
        await self.real.publish(channel, payload)


def failing_publisher(container: Container, times: int = 1) -> Faults:
    """The next ``times`` publishes fail: call before the container builds its handlers."""
    publisher = FlakyPublisher(container.publisher(), Faults(times))
    container.publisher.override(providers.Object(publisher))
    return publisher.faults


# Redis.


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

        await eventually(token_back, f"the barrier on {self._channel}", within)
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

        await eventually(both_confirmed, f"the subscription to {channel}")
        yield Subscriber(client, pubsub, channel, barrier)


class RedisServer:
    """A redis-server process of the test's own, to stop and start again on one port."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._log = directory / f"redis-{port}.log"
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        assert self._process is None, "already running"
        self._process = await asyncio.create_subprocess_exec(
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            str(self._log),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await eventually(self._answers, f"redis-server on port {self.port}")

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def _answers(self) -> bool:
        if self._process is not None and self._process.returncode is not None:
            raise RuntimeError(f"redis-server exited with {self._process.returncode}")
        client = Redis.from_url(
            self.url, socket_connect_timeout=1, socket_timeout=1, retry=Retry(NoBackoff(), 0)
        )
        try:
            return bool(await client.ping())
        except (RedisConnectionError, RedisTimeoutError, OSError):
            return False
        finally:
            await client.aclose()


# SMTP.


@dataclass(frozen=True)
class ReceivedMail:
    sender: str
    recipients: list[str]
    message: EmailMessage


class SmtpSink:
    """A real SMTP server (aiosmtpd, in a thread) that keeps every mail it accepts."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.mails: list[ReceivedMail] = []
        self._controller: Controller | None = None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        message = message_from_bytes(content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        sender = envelope.mail_from or ""
        self.mails.append(ReceivedMail(sender, list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"

    async def start(self) -> None:
        assert self._controller is None, "already running"
        # A stopped controller has closed its event loop: a restart needs a new one.
        controller = Controller(self, hostname="127.0.0.1", port=self.port)
        await asyncio.to_thread(controller.start)
        self._controller = controller

    async def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            await asyncio.to_thread(controller.stop)

    def about(self, sku: str) -> list[ReceivedMail]:
        return [m for m in self.mails if sku in str(m.message["Subject"])]
