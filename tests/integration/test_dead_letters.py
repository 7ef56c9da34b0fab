"""Messages the consumer cannot apply go to the dead-letter list, whole, with why.

A real Redis (a list of each test's own) and a real database, SQLite and
PostgreSQL; a transient failure is a crash right after the command's commit
(a unit of work of the test's own, through the container), or a PostgreSQL
server that is not there.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from app import views
from app.adapters.dead_letters import RedisDeadLetters
from app.domain import commands
from app.wire import CHANGE_BATCH_QUANTITY as CHANNEL
from tests.support.dead_letters import (
    ATTEMPTS,
    Service,
    consumer_of,
    running_service,
)
from tests.support.faults import crash_after_commit
from tests.support.processes import dead_redis_url
from tests.support.refs import random_ref
from tests.support.servers import free_port

pytestmark = pytest.mark.redis


@pytest.fixture
async def service(database_url: str, redis_url: str) -> AsyncIterator[Service]:
    async with running_service(database_url, redis_url) as service:
        yield service


async def new_batch(service: Service, qty: int = 10) -> str:
    ref = random_ref("batch")
    await service.container.bus().handle(commands.CreateBatch(ref, random_ref("sku"), qty, None))
    return ref


async def purchased(service: Service, ref: str) -> int:
    batch = await views.batch(service.container.read_source(), ref)
    assert batch is not None
    return int(batch["purchased"])


def dead_letters_counted(reason: str) -> float:
    value = REGISTRY.get_sample_value("allocation_dead_letters_total", {"reason": reason})
    return value or 0.0


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"not json at all", "Invalid JSON"),
        (b'{"batchref": "b-1", "qty": 3', "Invalid JSON"),
        (json.dumps(["a", "list"]).encode(), "message: Input should be"),
        (json.dumps({"batchref": "b-1"}).encode(), "qty: Field required"),
        (json.dumps({"batchref": "b-1", "qty": "lots"}).encode(), "qty: Input should be"),
        (json.dumps({"batchref": "b-1", "qty": -1}).encode(), "qty: Input should be greater"),
        (json.dumps({"batchref": 7, "qty": 1}).encode(), "batchref: Input should be"),
    ],
)
async def test_a_malformed_message_is_dead_lettered_at_once(
    service: Service, data: bytes, error: str
) -> None:
    before = dead_letters_counted("malformed")

    outcome = await service.consumer.handle(data)

    letter = outcome.dead_letter
    assert letter is not None
    assert outcome.kept
    assert await service.dead_letters.entries() == [letter]
    assert (letter.channel, letter.reason, letter.attempts) == (CHANNEL, "malformed", 1)
    assert (letter.message, letter.encoding) == (data.decode(), "utf-8")
    assert letter.error_type == "ValidationError"
    assert error in letter.error
    assert re.fullmatch(r"[0-9a-f]{32}", letter.id)
    assert letter.request_id is not None
    assert re.fullmatch(r"[0-9a-f]{32}", letter.request_id)
    failed_at = datetime.fromisoformat(letter.failed_at)
    assert failed_at.utcoffset() == timedelta(0)
    assert datetime.now(UTC) - failed_at < timedelta(minutes=1)
    assert service.consumer.counts["malformed"] == 1
    assert service.consumer.counts["dead_lettered"] == 1
    assert dead_letters_counted("malformed") == before + 1


async def test_a_message_that_is_not_utf8_is_kept_byte_for_byte(service: Service) -> None:
    data = b'{"batchref": "caf\xe9", "qty": 1}\xff\x00'

    letter = await service.dead_letter(data)

    [stored] = await service.dead_letters.entries()
    assert stored.encoding == "base64"
    assert base64.b64decode(stored.message) == data
    assert stored.raw() == data
    assert stored == letter


async def test_the_stored_entry_is_json_with_every_field(service: Service, redis_url: str) -> None:
    letter = await service.dead_letter(b"{oops")

    async with Redis.from_url(redis_url) as client:
        [raw] = await client.lrange(service.dead_letters.key, 0, -1)
    assert json.loads(raw) == {
        "id": letter.id,
        "channel": "change_batch_quantity",
        "message": "{oops",
        "encoding": "utf-8",
        "reason": "malformed",
        "error": {"type": "ValidationError", "message": letter.error},
        "attempts": 1,
        "failed_at": letter.failed_at,
        "request_id": letter.request_id,
    }


async def test_an_unknown_batch_is_dead_lettered_without_retries(service: Service) -> None:
    unknown = random_ref("unknown")
    data = json.dumps({"batchref": unknown, "qty": 3})

    letter = await service.dead_letter(data)

    assert await service.dead_letters.entries() == [letter]
    assert (letter.reason, letter.attempts) == ("unknown_batch", 1)
    assert (letter.error_type, letter.error) == ("UnknownBatch", f"Unknown batch {unknown}")
    assert letter.message == data
    assert service.consumer.counts["unknown_batch"] == 1


async def test_a_transient_failure_that_clears_within_the_retries_is_applied(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    ref = await new_batch(service)
    faults = crash_after_commit(service.container, times=ATTEMPTS - 1)
    caplog.set_level(logging.WARNING, logger="app.entrypoints.messaging.policy")

    outcome = await service.consumer.handle(json.dumps({"batchref": ref, "qty": 4}))

    assert outcome.applied
    assert await service.dead_letters.entries() == []
    assert await purchased(service, ref) == 4
    assert service.consumer.counts["applied"] == 1
    assert faults.struck == ATTEMPTS - 1
    retries = [r.getMessage() for r in caplog.records if "trying again" in r.getMessage()]
    assert len(retries) == ATTEMPTS - 1, retries
    assert "InjectedFault" in retries[0]


async def test_a_failure_that_persists_is_dead_lettered_after_every_attempt(
    service: Service,
) -> None:
    ref = await new_batch(service)
    faults = crash_after_commit(service.container, times=100)
    data = json.dumps({"batchref": ref, "qty": 4})
    try:
        letter = await service.dead_letter(data)
    finally:
        service.container.uow.reset_override()

    assert faults.struck == ATTEMPTS
    assert await service.dead_letters.entries() == [letter]
    assert (letter.reason, letter.attempts) == ("failed", ATTEMPTS)
    assert (letter.error_type, letter.error) == ("InjectedFault", "crash after the commit")
    assert service.consumer.counts["failed"] == 1
    # Each attempt committed before it failed: the change is applied, once or more.
    assert await purchased(service, ref) == 4


@pytest.mark.postgres
async def test_a_database_outage_dead_letters_then_replay_applies_once_it_is_back(
    postgres_url: str, redis_url: str
) -> None:
    nowhere = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere"
    async with running_service(postgres_url, redis_url) as service:
        ref = await new_batch(service)
        async with running_service(nowhere, redis_url, key=service.dead_letters.key) as down:
            letter = await down.dead_letter(json.dumps({"batchref": ref, "qty": 2}))

        assert (letter.reason, letter.attempts) == ("failed", ATTEMPTS)
        assert letter.error_type == "DatabaseUnavailable"
        assert await service.dead_letters.entries() == [letter]

        taken = await service.dead_letters.take(letter.id)
        assert taken == letter
        outcome = await service.consumer.handle(taken.raw(), earlier=taken)

        assert outcome.applied
        assert await service.dead_letters.entries() == []
        assert await purchased(service, ref) == 2


async def test_with_the_list_unreachable_the_message_is_logged_in_full(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    message = f"lost? {random_ref('never')}"
    unreachable = RedisDeadLetters(Redis.from_url(dead_redis_url()), "test:unreachable")
    consumer = consumer_of(service.container, unreachable)
    caplog.set_level(logging.ERROR, logger="app.entrypoints.messaging.policy")

    outcome = await consumer.handle(message.encode())

    assert outcome.dead_letter is not None
    assert not outcome.kept
    [logged] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "could not write to the dead-letter list test:unreachable" in logged.getMessage()
    assert outcome.dead_letter.to_json() in logged.getMessage()
    assert json.dumps(message) in logged.getMessage()
