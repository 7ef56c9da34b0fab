"""The message policy, once for every transport: apply, supersede, dead-letter, what to acknowledge.

On the fakes, with the bus as the container wires it. Each transport's own
tests (Redis pub/sub and Streams, JetStream) check only that it receives,
acknowledges and hands back as the outcome says.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection

import pytest

from app.adapters.database_errors import ConcurrencyError, DatabaseUnavailable
from app.backoff import Backoff
from app.domain import commands, events
from app.entrypoints.messaging.policy import MessagePolicy, Received
from app.service_layer.unit_of_work import InlineHandlers
from tests.support.buses import FAST_RETRY, bootstrap_test_bus
from tests.support.fakes import (
    FakeDeadLetters,
    FakeNotifications,
    FakeStore,
    FakeUnitOfWork,
)
from tests.support.refs import random_ref

JETSTREAM = Received("nats", "CHANGE_BATCH_QUANTITY", "7", (1_000, 0))


class FailingUnitOfWork(FakeUnitOfWork):
    """Its commit fails with ``error`` while ``left[0]`` says so; it counts its tries."""

    def __init__(
        self,
        store: FakeStore,
        inline: InlineHandlers | None = None,
        after_commit: Collection[type[events.Event]] = (),
        *,
        error: Callable[[], Exception],
        left: list[int],
    ) -> None:
        super().__init__(store, inline, after_commit)
        self._error = error
        self._left = left

    async def _commit(self) -> None:
        if self._left[0] > 0:
            self._left[0] -= 1
            raise self._error()
        await super()._commit()


class Setup:
    def __init__(self, error: Callable[[], Exception] | None = None, failures: int = 0) -> None:
        self.store = FakeStore()
        self.dead_letters = FakeDeadLetters()
        self.left = [0]
        self.tries = 0
        service = bootstrap_test_bus(self.store, FakeNotifications())
        self.create = service.bus
        if error is not None:
            self.left[0] = failures

            def failing_uow() -> FakeUnitOfWork:
                self.tries += 1
                return FailingUnitOfWork(self.store, error=error, left=self.left)

            service = bootstrap_test_bus(self.store, FakeNotifications(), uow_factory=failing_uow)
        bus = service.bus
        self.policy = MessagePolicy(lambda: bus, self.dead_letters, Backoff(0.0001, 0.001), tries=3)

    async def batch(self, qty: int = 10) -> str:
        ref = random_ref("batch")
        left, self.left[0] = self.left[0], 0
        await self.create.handle(commands.CreateBatch(ref, random_ref("sku"), qty, None))
        self.left[0] = left
        return ref

    def purchased(self, ref: str) -> int:
        [batch] = [b for p in self.store.products.values() for b in p.batches if b.reference == ref]
        return int(batch.purchased_quantity)


def change(ref: str, qty: int) -> str:
    return json.dumps({"batchref": ref, "qty": qty})


async def test_a_change_is_applied_and_done() -> None:
    setup = Setup()
    ref = await setup.batch()

    outcome = await setup.policy.handle(change(ref, 4), JETSTREAM)

    assert (outcome.applied, outcome.done) == (True, True)
    assert setup.purchased(ref) == 4


async def test_a_change_sent_before_the_one_applied_is_skipped_and_done() -> None:
    setup = Setup()
    ref = await setup.batch()
    later = Received("nats", "S", "9", (2_000, 0))
    await setup.policy.handle(change(ref, 4), later)

    earlier = await setup.policy.handle(change(ref, 7), JETSTREAM)
    again = await setup.policy.handle(change(ref, 8), later)  # a redelivery of the later one

    assert (earlier.superseded, earlier.done, again.superseded) == (True, True, True)
    assert setup.purchased(ref) == 4
    assert setup.dead_letters.letters == []


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"not json", "malformed"), ('{"batchref": "x", "qty": -1}', "malformed")],
)
async def test_a_malformed_message_is_dead_lettered_at_once(data: bytes | str, reason: str) -> None:
    setup = Setup()

    outcome = await setup.policy.handle(data, JETSTREAM, attempt=1, last=False)

    assert outcome.done
    [letter] = setup.dead_letters.letters
    assert (letter.reason, letter.attempts, letter.stream_id, letter.position) == (
        reason,
        1,
        "7",
        "1000-0",
    )


async def test_an_unknown_batch_is_dead_lettered_at_once() -> None:
    setup = Setup()

    outcome = await setup.policy.handle(change("nope", 3), JETSTREAM, attempt=1, last=False)

    assert outcome.done
    assert [d.reason for d in setup.dead_letters.letters] == ["unknown_batch"]


async def test_a_failure_with_tries_left_comes_again_and_the_last_try_dead_letters() -> None:
    setup = Setup(lambda: DatabaseUnavailable("down"), failures=100)
    ref = await setup.batch()

    # As of now: the fakes keep no position of a change whose commit failed either.
    now = Received("nats", "S", "7")
    first = await setup.policy.handle(change(ref, 4), now, attempt=1, last=False)
    last = await setup.policy.handle(change(ref, 4), now, attempt=3, last=True)

    assert (first.again, first.done, first.dead_letter) == (True, False, None)
    assert last.done
    [letter] = setup.dead_letters.letters
    assert (letter.reason, letter.attempts, letter.error_type) == (
        "failed",
        3,
        "DatabaseUnavailable",
    )


async def test_tries_in_place_stop_at_the_budget_one_unit_of_work_each() -> None:
    setup = Setup(lambda: DatabaseUnavailable("down"), failures=100)
    ref = await setup.batch()

    outcome = await setup.policy.handle_now(change(ref, 4), Received("redis", "c"))

    assert outcome.dead_letter is not None
    assert outcome.dead_letter.attempts == 3
    assert setup.tries == 3


async def test_a_failure_that_clears_within_the_budget_is_applied() -> None:
    setup = Setup(lambda: DatabaseUnavailable("down"), failures=2)
    ref = await setup.batch()

    outcome = await setup.policy.handle_now(change(ref, 4), Received("redis", "c"))

    assert outcome.applied
    assert setup.purchased(ref) == 4
    assert setup.tries == 3


async def test_collisions_the_bus_gave_up_on_are_not_tried_again() -> None:
    setup = Setup(lambda: ConcurrencyError("collided"), failures=100)
    ref = await setup.batch()

    outcome = await setup.policy.handle_now(change(ref, 4), Received("redis", "c"))

    # The bus's own budget, and no more: not the bus's times the policy's.
    assert setup.tries == FAST_RETRY.attempts
    assert outcome.dead_letter is not None
    assert (outcome.dead_letter.reason, outcome.dead_letter.attempts) == ("failed", 1)


async def test_a_dead_letter_that_cannot_be_stored_is_not_done() -> None:
    setup = Setup()
    setup.dead_letters.unreachable = True

    outcome = await setup.policy.handle(b"not json", JETSTREAM)

    assert outcome.dead_letter is not None
    assert (outcome.kept, outcome.done) == (False, False)


async def test_a_replay_keeps_the_letters_place_and_adds_up_its_attempts() -> None:
    setup = Setup()
    missing, never = random_ref("later"), random_ref("never")
    await setup.policy.handle(change(missing, 6), JETSTREAM)
    await setup.policy.handle(change(never, 1), JETSTREAM)
    letter, other = setup.dead_letters.letters
    await setup.create.handle(commands.CreateBatch(missing, random_ref("sku"), 10, None))
    # A change sent after the letter's was applied meanwhile.
    await setup.policy.handle(change(missing, 9), Received("nats", "S", "9", (1_500, 0)))

    replayed = await setup.policy.handle_now(letter.raw(), Received("replay", "c"), letter)
    again = await setup.policy.handle_now(other.raw(), Received("replay", "c"), other)

    assert replayed.superseded
    assert setup.purchased(missing) == 9
    assert again.dead_letter is not None
    assert (again.dead_letter.id, again.dead_letter.attempts) == (other.id, 2)
    assert again.dead_letter.position == "1000-0"
