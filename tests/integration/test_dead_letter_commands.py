"""``allocation dead-letters`` list, replay and drop, on a real Redis and database.

These call the commands' functions in-process; tests/e2e/test_dead_letters.py
runs the real command.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from app import views
from app.domain import commands
from app.entrypoints.cli import dead_letters as command
from tests.support.dead_letters import Service, running_service
from tests.support.refs import random_ref

pytestmark = pytest.mark.redis


@pytest.fixture
async def service(database_url: str, redis_url: str) -> AsyncIterator[Service]:
    async with running_service(database_url, redis_url) as service:
        yield service


async def add_batch(service: Service, ref: str, qty: int = 10) -> None:
    await service.container.bus().handle(commands.CreateBatch(ref, random_ref("sku"), qty, None))


async def purchased(service: Service, ref: str) -> int | None:
    batch = await views.batch(service.container.read_source(), ref)
    return None if batch is None else int(batch["purchased"])


def change(ref: str, qty: int) -> str:
    return json.dumps({"batchref": ref, "qty": qty})


async def test_replay_after_the_cause_is_fixed_applies_and_removes(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = random_ref("batch")
    letter = await service.dead_letter(change(ref, 3))
    await add_batch(service, ref)

    code = await command.replay(service.dead_letters, service.consumer.policy, letter.id)

    assert code == 0
    assert capsys.readouterr().out == f"{letter.id}: applied\n"
    assert await service.dead_letters.entries() == []
    assert await purchased(service, ref) == 3


async def test_replay_of_a_still_broken_message_puts_it_back_one_attempt_more(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = random_ref("batch")
    letter = await service.dead_letter(change(ref, 3))

    code = await command.replay(service.dead_letters, service.consumer.policy, letter.id)

    assert code == 1
    [again] = await service.dead_letters.entries()
    assert (again.id, again.message, again.reason) == (letter.id, letter.message, "unknown_batch")
    assert again.attempts == letter.attempts + 1 == 2
    assert again.error == f"Unknown batch {ref}"
    assert again.failed_at >= letter.failed_at
    assert again.request_id != letter.request_id  # the replay's own
    assert capsys.readouterr().out == (
        f"{letter.id}: failed again (UnknownBatch: Unknown batch {ref}); "
        "back on the list, 2 attempts\n"
    )


async def test_replay_all_applies_what_it_can_and_keeps_the_rest(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    fixed, broken = random_ref("fixed"), random_ref("broken")
    first = await service.dead_letter(change(fixed, 1))
    bad = await service.dead_letter("{not json")
    second = await service.dead_letter(change(fixed, 2))
    gone = await service.dead_letter(change(broken, 5))
    await add_batch(service, fixed)

    code = await command.replay(service.dead_letters, service.consumer.policy, None)

    assert code == 1
    assert [(d.id, d.attempts) for d in await service.dead_letters.entries()] == [
        (bad.id, 2),
        (gone.id, 2),
    ]
    assert await purchased(service, fixed) == 2  # in the order they came
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{first.id}: applied"
    assert lines[1].startswith(f"{bad.id}: failed again (ValidationError: ")
    assert lines[2] == f"{second.id}: applied"
    assert lines[3].startswith(f"{gone.id}: failed again (UnknownBatch: ")


async def test_two_operators_replaying_one_entry_apply_it_once(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = random_ref("batch")
    letter = await service.dead_letter(change(ref, 6))
    await add_batch(service, ref)
    one, other = service.consumer, service.another_consumer()

    codes = await asyncio.gather(
        command.replay(service.dead_letters, one.policy, letter.id),
        command.replay(service.dead_letters, other.policy, letter.id),
    )

    assert sorted(codes) == [0, 1]
    assert one.counts["applied"] + other.counts["applied"] == 1
    out, err = capsys.readouterr()
    assert out == f"{letter.id}: applied\n"
    assert err == f"{letter.id}: no such dead letter (replayed or dropped meanwhile?)\n"
    assert await service.dead_letters.entries() == []


async def test_replay_of_an_unknown_id_fails(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await command.replay(service.dead_letters, service.consumer.policy, "nope")

    assert code == 1
    assert "nope: no such dead letter" in capsys.readouterr().err


async def test_drop_removes_one_or_all(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    letters = [await service.dead_letter(f"{{bad {i}") for i in range(3)]

    assert await command.drop(service.dead_letters, letters[1].id) == 0
    assert capsys.readouterr().out == "dropped 1 dead letter\n"
    assert [d.id for d in await service.dead_letters.entries()] == [letters[0].id, letters[2].id]

    assert await command.drop(service.dead_letters, letters[1].id) == 1
    assert f"{letters[1].id}: no such dead letter" in capsys.readouterr().err

    assert await command.drop(service.dead_letters, None) == 0
    assert capsys.readouterr().out == "dropped 2 dead letters\n"
    assert await service.dead_letters.entries() == []


async def test_list_shows_each_entry_in_a_line_or_all_of_it_as_json(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await command.show(service.dead_letters, as_json=False) == 0
    assert capsys.readouterr().out == f"no dead letters on {service.dead_letters.key}\n"
    unknown = random_ref("unknown")
    malformed = await service.dead_letter('{"batchref": "x", "qty": "many"}')
    missing = await service.dead_letter(change(unknown, 1) + " " * 100)

    assert await command.show(service.dead_letters, as_json=False) == 0
    first, second, total = capsys.readouterr().out.splitlines()
    assert first == (
        f"{malformed.id}  {malformed.failed_at}  attempts=1  "
        'ValidationError: qty: Input should be a valid integer  {"batchref": "x", "qty": "many"}'
    )
    assert second.startswith(
        f"{missing.id}  {missing.failed_at}  attempts=1  UnknownBatch: Unknown batch {unknown}  "
    )
    assert second.endswith("...")  # the message, cut short
    assert total == f"2 dead letters on {service.dead_letters.key}"

    assert await command.show(service.dead_letters, as_json=True) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [malformed.as_dict(), missing.as_dict()]
    assert listed[1]["message"] == missing.message


async def test_a_replay_killed_half_way_loses_nothing(
    service: Service, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = random_ref("batch")
    letter = await service.dead_letter(change(ref, 7))
    await add_batch(service, ref)

    # A replay claims the entry and dies before settling it, as under SIGKILL.
    claim = await service.dead_letters.claim(letter.id)
    assert claim is not None
    assert await service.dead_letters.entries() == [letter]
    # While its claim lasts, no one else replays the entry...
    assert await command.replay(service.dead_letters, service.consumer.policy, letter.id) == 1
    assert await purchased(service, ref) == 10
    # ...and once the claim runs out, the entry replays as any other.
    client = Redis.from_url(redis_url)
    try:
        assert await client.pexpire(claim.lock, 1)
        await asyncio.sleep(0.05)
    finally:
        await client.aclose()
    capsys.readouterr()

    assert await command.replay(service.dead_letters, service.consumer.policy, letter.id) == 0
    assert capsys.readouterr().out == f"{letter.id}: applied\n"
    assert await service.dead_letters.entries() == []
    assert await purchased(service, ref) == 7
