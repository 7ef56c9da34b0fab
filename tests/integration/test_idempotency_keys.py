"""The idempotency keys table: one owner per key, expiry, takeover and pruning."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters import orm
from app.adapters.idempotency import Answer, Existing, Reserved, SqlAlchemyIdempotencyKeys
from app.clock import utcnow

DAY = timedelta(days=1)
ROUTE = "POST /allocate"
ANSWER = Answer(202, '{"orderid":"o1"}', "/allocations/o1")


def new_key() -> str:
    return uuid.uuid4().hex


async def stored_keys(engine: AsyncEngine, *keys: str) -> set[str]:
    k = orm.idempotency_keys.c
    async with engine.connect() as conn:
        found = await conn.scalars(select(k.idempotency_key).where(k.idempotency_key.in_(keys)))
        return set(found)


async def test_a_key_has_one_owner_until_it_has_an_answer(engine: AsyncEngine) -> None:
    keys, key = SqlAlchemyIdempotencyKeys(engine, DAY), new_key()

    first = await keys.reserve(key, ROUTE, "f1")
    second = await keys.reserve(key, ROUTE, "f1")
    assert isinstance(first, Reserved)
    assert second == Existing(ROUTE, "f1", answer=None)

    await keys.record(key, first, ANSWER)
    assert await keys.reserve(key, ROUTE, "f1") == Existing(ROUTE, "f1", ANSWER)


async def test_a_released_key_is_free_again(engine: AsyncEngine) -> None:
    keys, key = SqlAlchemyIdempotencyKeys(engine, DAY), new_key()
    first = await keys.reserve(key, ROUTE, "f1")
    assert isinstance(first, Reserved)

    await keys.release(key, first)

    assert isinstance(await keys.reserve(key, ROUTE, "f2"), Reserved)


async def test_an_expired_key_is_new_again(engine: AsyncEngine) -> None:
    keys, key = SqlAlchemyIdempotencyKeys(engine, timedelta(0)), new_key()
    first = await keys.reserve(key, ROUTE, "f1")
    assert isinstance(first, Reserved)
    await keys.record(key, first, ANSWER)

    again = await keys.reserve(key, "POST /batches", "f2")

    assert isinstance(again, Reserved)
    k = orm.idempotency_keys.c
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(k.request, k.fingerprint, k.status).where(k.idempotency_key == key)
            )
        ).one()
    assert tuple(row) == ("POST /batches", "f2", None)


async def test_a_stale_reservation_is_taken_over_and_its_owner_then_changes_nothing(
    engine: AsyncEngine,
) -> None:
    # As when the first owner's process died, or is still at work long after.
    keys, key = SqlAlchemyIdempotencyKeys(engine, DAY), new_key()
    impatient = SqlAlchemyIdempotencyKeys(engine, DAY, stale_after=timedelta(0))
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


async def test_prune_forgets_only_expired_keys(engine: AsyncEngine) -> None:
    expired, kept = new_key(), new_key()
    await SqlAlchemyIdempotencyKeys(engine, DAY).reserve(kept, ROUTE, "f1")
    await SqlAlchemyIdempotencyKeys(engine, timedelta(0)).reserve(expired, ROUTE, "f1")

    assert await SqlAlchemyIdempotencyKeys(engine, DAY).prune(utcnow()) >= 1

    assert await stored_keys(engine, expired, kept) == {kept}


async def test_expired_keys_are_pruned_as_keys_are_written(engine: AsyncEngine) -> None:
    keys = SqlAlchemyIdempotencyKeys(engine, timedelta(0), prune_every=timedelta(0))
    old, new = new_key(), new_key()
    await keys.reserve(old, ROUTE, "f1")

    await keys.reserve(new, ROUTE, "f1")

    assert await stored_keys(engine, old, new) == {new}
