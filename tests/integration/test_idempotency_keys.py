"""The idempotency keys table: one owner per key, expiry, takeover and pruning."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters import tables
from app.adapters.idempotency import Answer, Existing, Reserved, SqlIdempotencyKeys
from app.adapters.liveness import Liveness, ProcessLiveness, for_engine
from app.clock import utcnow
from tests.support.polling import eventually

DAY = timedelta(days=1)
ROUTE = "POST /allocate"
ANSWER = Answer(202, '{"orderid":"o1"}', "/allocations/o1")


def new_key() -> str:
    return uuid.uuid4().hex


@pytest.fixture
async def me(engine: AsyncEngine) -> AsyncIterator[Liveness]:
    """This process, seen alive as the API sees itself."""
    liveness = for_engine(engine)
    await liveness.start()
    yield liveness
    await liveness.stop()


def keys_of(
    engine: AsyncEngine, owner: Liveness, ttl: timedelta = timedelta(days=1), **options: timedelta
) -> SqlIdempotencyKeys:
    return SqlIdempotencyKeys(engine, owner, ttl, **options)


_children: dict[str, asyncio.subprocess.Process] = {}


async def another_process(engine: AsyncEngine) -> Liveness:
    """Another process on the same database, alive until it ``died``."""
    if engine.dialect.name == "postgresql":
        other = for_engine(engine)  # in this process, but as another holds its lock
        await other.start()
        return other
    child = await asyncio.create_subprocess_exec("sleep", "60")
    liveness = ProcessLiveness(child.pid)
    _children[liveness.me] = child
    return liveness


async def stored_keys(engine: AsyncEngine, *keys: str) -> set[str]:
    k = tables.idempotency_keys.c
    async with engine.connect() as conn:
        found = await conn.scalars(select(k.idempotency_key).where(k.idempotency_key.in_(keys)))
        return set(found)


async def test_a_key_has_one_owner_until_it_has_an_answer(
    engine: AsyncEngine, me: Liveness
) -> None:
    keys, key = keys_of(engine, me), new_key()

    first = await keys.reserve(key, ROUTE, "f1")
    second = await keys.reserve(key, ROUTE, "f1")
    assert isinstance(first, Reserved)
    assert second == Existing(ROUTE, "f1", answer=None)

    await keys.record(key, first, ANSWER)
    assert await keys.reserve(key, ROUTE, "f1") == Existing(ROUTE, "f1", ANSWER)


async def test_a_released_key_is_free_again(engine: AsyncEngine, me: Liveness) -> None:
    keys, key = keys_of(engine, me), new_key()
    first = await keys.reserve(key, ROUTE, "f1")
    assert isinstance(first, Reserved)

    await keys.release(key, first)

    assert isinstance(await keys.reserve(key, ROUTE, "f2"), Reserved)


async def test_an_expired_key_is_new_again(engine: AsyncEngine, me: Liveness) -> None:
    keys, key = keys_of(engine, me, timedelta(0)), new_key()
    first = await keys.reserve(key, ROUTE, "f1")
    assert isinstance(first, Reserved)
    await keys.record(key, first, ANSWER)

    again = await keys.reserve(key, "POST /batches", "f2")

    assert isinstance(again, Reserved)
    k = tables.idempotency_keys.c
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(k.request, k.fingerprint, k.status).where(k.idempotency_key == key)
            )
        ).one()
    assert tuple(row) == ("POST /batches", "f2", None)


async def test_a_stale_reservation_is_taken_over_and_its_owner_then_changes_nothing(
    engine: AsyncEngine, me: Liveness
) -> None:
    # As when the first owner's process died, or is still at work long after.
    keys, key = keys_of(engine, me), new_key()
    impatient = keys_of(engine, me, stale_after=timedelta(0))
    original = await keys.reserve(key, ROUTE, "f1")
    assert isinstance(original, Reserved)

    takeover = await impatient.reserve(key, ROUTE, "f1")
    assert isinstance(takeover, Reserved)
    assert takeover != original

    await keys.release(key, original)
    await keys.record(key, original, Answer(409, "{}", None))
    assert await keys.reserve(key, ROUTE, "f1") == Existing(ROUTE, "f1", answer=None)
    await impatient.record(key, takeover, ANSWER)
    assert await keys.reserve(key, ROUTE, "f1") == Existing(ROUTE, "f1", ANSWER)


async def test_prune_forgets_only_expired_keys(engine: AsyncEngine, me: Liveness) -> None:
    expired, kept = new_key(), new_key()
    await keys_of(engine, me).reserve(kept, ROUTE, "f1")
    await keys_of(engine, me, timedelta(0)).reserve(expired, ROUTE, "f1")

    assert await keys_of(engine, me).prune(utcnow()) >= 1

    assert await stored_keys(engine, expired, kept) == {kept}


async def test_expired_keys_are_pruned_as_keys_are_written(
    engine: AsyncEngine, me: Liveness
) -> None:
    keys = keys_of(engine, me, timedelta(0), prune_every=timedelta(0))
    old, new = new_key(), new_key()
    await keys.reserve(old, ROUTE, "f1")

    await keys.reserve(new, ROUTE, "f1")

    assert await stored_keys(engine, old, new) == {new}


async def test_the_reservation_of_a_process_that_died_is_taken_over_at_once(
    engine: AsyncEngine, me: Liveness
) -> None:
    key, other = new_key(), await another_process(engine)
    theirs = await keys_of(engine, other).reserve(key, ROUTE, "f1")
    assert isinstance(theirs, Reserved)
    keys = keys_of(engine, me)
    # Alive: its reservation stands, however young.
    assert await keys.reserve(key, ROUTE, "f1") == Existing(ROUTE, "f1", answer=None)

    await died(other)

    async def taken_over() -> bool:
        return isinstance(await keys.reserve(key, ROUTE, "f1"), Reserved)

    await eventually(taken_over, 5.0, "the dead process's reservation taken over")
    # Another body with the key is still another request, dead owner or not.
    again, other = new_key(), await another_process(engine)
    assert isinstance(await keys_of(engine, other).reserve(again, ROUTE, "f1"), Reserved)
    await died(other)
    assert await keys.reserve(again, ROUTE, "f2") == Existing(ROUTE, "f1", answer=None)


async def died(process: Liveness) -> None:
    child = _children.pop(process.me, None)
    if child is None:
        await process.stop()  # its lock's connection closes, as when its process dies
    else:
        child.kill()
        await child.wait()
