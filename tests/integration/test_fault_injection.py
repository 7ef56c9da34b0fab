"""Nothing is lost when a step fails: the read model at once, the rest from the outbox.

Each test injects a fault at one step of an allocation (a crash right after
the command's commit, an after-commit handler failing after it ran, the
Redis publish failing) through the container's providers, shows what the
user sees at once (the allocation, in the read model: it is written in the
command's own transaction) and what waits (``line_allocated``), then runs
delivery passes by hand and shows the outbox put the rest right: each
event published, and its delivery settled. PostgreSQL and a real Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from app import views
from app.adapters.read_source import ReadSource
from app.config import Settings
from app.container import Container
from app.domain import commands, events
from app.main import create_app
from tests.support.apps import serving
from tests.support.faults import (
    Faults,
    InjectedFault,
    crash_after_commit,
    fail_after_running,
    failing_after_it_ran,
    failing_publisher,
    override_after_commit_handlers,
)
from tests.support.outbox import (
    allocated_in_write_model,
    allocated_row,
    deliver_until_delivered,
    handled_by,
)
from tests.support.redis import Subscriber
from tests.support.refs import random_ref

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

# Allocated's one after-commit handler, as registered (and stored in the ledger).
PUBLISH = "publish_allocated_event"


@pytest.fixture
def settings(module_database: str, redis_url: str) -> Settings:
    # No relay runs on its own: the tests run delivery passes by hand.
    return Settings(database_url=module_database, redis_url=redis_url, relay_enabled=False)


@pytest.fixture
async def line_allocated(redis_url: str) -> AsyncIterator[Subscriber]:
    async with Subscriber(redis_url, "line_allocated") as subscriber:
        yield subscriber


async def published_for(subscriber: Subscriber, orderid: str) -> list[str]:
    """The event ids of the line_allocated messages about ``orderid`` so far."""
    return [m["event_id"] for m in await subscriber.received() if m.get("orderid") == orderid]


async def new_batch(container: Container, qty: int = 10) -> tuple[str, str]:
    sku, ref = random_ref("sku"), random_ref("batch")
    await container.bus().handle(commands.CreateBatch(ref, sku, qty, None))
    return sku, ref


async def allocated_shown(container: Container, orderid: str, sku: str, ref: str) -> None:
    """The read model shows the line in ``ref``, and the batch with its quantity taken."""
    read_engine = container.read_engine()
    assert await views.allocations(ReadSource(read_engine), orderid) == [
        {"sku": sku, "batchref": ref}
    ]
    assert (await views.batch(ReadSource(read_engine), ref) or {}).get("allocated") == 3


async def test_a_crash_after_the_commit_loses_nothing(
    container: Container, line_allocated: Subscriber
) -> None:
    sku, ref = await new_batch(container)
    orderid = random_ref("order")
    faults = crash_after_commit(container)

    with pytest.raises(InjectedFault):
        await container.bus().handle(commands.Allocate(orderid, sku, 3))

    assert faults.struck == 1
    engine = container.engine()
    assert await allocated_in_write_model(engine, orderid, sku) == ref
    # The read model was written in the same transaction: it shows the allocation already.
    await allocated_shown(container, orderid, sku, ref)
    # Only what happens after the commit waits, in the outbox.
    assert await published_for(line_allocated, orderid) == []
    row = await allocated_row(engine, orderid)
    assert (row.pending, row.attempts) == (True, 0)
    assert await handled_by(engine, row.id) == set()

    await deliver_until_delivered(container, [row.id])

    assert await published_for(line_allocated, orderid) == [row.id]
    await allocated_shown(container, orderid, sku, ref)
    row = await allocated_row(engine, orderid)
    assert not row.pending
    assert row.last_error is None
    assert await handled_by(engine, row.id) == set()


async def test_a_handler_failing_after_it_ran_is_run_again_recognisably(
    container: Container, line_allocated: Subscriber
) -> None:
    faults = failing_after_it_ran(container, PUBLISH)
    sku, ref = await new_batch(container)
    orderid = random_ref("order")

    await container.bus().handle(commands.Allocate(orderid, sku, 3))  # the caller sees a 202

    await allocated_shown(container, orderid, sku, ref)
    engine = container.engine()
    row = await allocated_row(engine, orderid)
    assert await container.delivery().deliver_due() >= 1

    assert faults.struck == 1
    row = await allocated_row(engine, orderid)
    assert (row.pending, row.attempts) == (True, 1)
    assert row.last_error is not None
    assert PUBLISH in row.last_error
    assert "InjectedFault" in row.last_error
    assert await handled_by(engine, row.id) == set()  # it did not finish
    assert await published_for(line_allocated, orderid) == [row.id]  # but it did publish

    await deliver_until_delivered(container, [row.id])

    # Delivery is at least once: the repeat carries the same event id, for
    # subscribers to recognise.
    assert await published_for(line_allocated, orderid) == [row.id, row.id]
    row = await allocated_row(engine, orderid)
    assert not row.pending
    assert row.last_error is None
    await allocated_shown(container, orderid, sku, ref)


async def test_a_failing_handler_is_run_again_alone(
    container: Container, line_allocated: Subscriber
) -> None:
    # A second after-commit handler of Allocated, which fails once: the
    # publish, which finished, is recorded and not run again.
    seen: list[str] = []

    async def audit(event: Any) -> None:
        seen.append(event.id)

    faults = Faults(times=1)
    real = container.after_commit_handlers()
    audited = fail_after_running(audit, faults, "audit")
    handlers = {**real, events.Allocated: {**real[events.Allocated], "audit": audited}}
    override_after_commit_handlers(container, handlers)
    sku, ref = await new_batch(container)
    orderid = random_ref("order")

    await container.bus().handle(commands.Allocate(orderid, sku, 3))
    await container.delivery().deliver_due()

    engine = container.engine()
    row = await allocated_row(engine, orderid)
    assert (row.pending, row.attempts) == (True, 1)
    assert row.last_error is not None
    assert "audit" in row.last_error
    assert PUBLISH not in row.last_error
    assert await handled_by(engine, row.id) == {PUBLISH}
    assert await published_for(line_allocated, orderid) == [row.id]

    await deliver_until_delivered(container, [row.id])

    assert await published_for(line_allocated, orderid) == [row.id]  # not published again
    assert seen == [row.id, row.id]
    row = await allocated_row(engine, orderid)
    assert not row.pending
    assert row.last_error is None
    await allocated_shown(container, orderid, sku, ref)


async def test_a_failed_publish_is_published_later_exactly_once(
    container: Container, line_allocated: Subscriber
) -> None:
    faults = failing_publisher(container)
    sku, ref = await new_batch(container)
    orderid = random_ref("order")

    await container.bus().handle(commands.Allocate(orderid, sku, 3))
    await container.delivery().deliver_due()

    assert faults.struck == 1
    engine = container.engine()
    await allocated_shown(container, orderid, sku, ref)
    assert await published_for(line_allocated, orderid) == []
    row = await allocated_row(engine, orderid)
    assert (row.pending, row.attempts) == (True, 1)
    assert row.last_error is not None
    assert PUBLISH in row.last_error
    assert await handled_by(engine, row.id) == set()

    await deliver_until_delivered(container, [row.id])

    assert await published_for(line_allocated, orderid) == [row.id]
    row = await allocated_row(engine, orderid)
    assert not row.pending
    assert row.last_error is None
    assert await handled_by(engine, row.id) == set()


async def test_over_http_a_crash_after_the_commit_is_an_error_but_the_write_is_shown(
    settings: Settings, line_allocated: Subscriber
) -> None:
    app = create_app(settings)
    sku, ref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    container: Container = app.state.services
    # The app's error would otherwise be raised into the test, as in-process
    # ASGI does; a server would answer it with a 500, and so does this.
    async with serving(app, raise_app_exceptions=False) as client:
        created = await client.post("/batches", json={"ref": ref, "sku": sku, "qty": 10})
        assert created.status_code == 201
        faults = crash_after_commit(container)

        response = await client.post("/allocate", json={"orderid": orderid, "sku": sku, "qty": 2})

        assert response.status_code == 500
        assert faults.struck == 1
        container.uow.reset_override()
        # The commit happened, and with it the read model's update.
        shown = await client.get(f"/allocations/{orderid}")
        assert shown.status_code == 200
        assert shown.json() == [{"sku": sku, "batchref": ref}]
        row = await allocated_row(container.engine(), orderid)
        assert row.pending
        assert await published_for(line_allocated, orderid) == []

        await deliver_until_delivered(container, [row.id])

        assert await published_for(line_allocated, orderid) == [row.id]
        assert not (await allocated_row(container.engine(), orderid)).pending
