"""Nothing is lost when delivery fails at any step (DESIGN.md §4).

Each test arms a fault at one step of an allocation (after the command
commits, inside a handler's commit, in the Redis publish), shows the damage
the fast path leaves, then runs the relay by hand and shows the outbox put it
right: the read model catches up and ``line_allocated`` is published exactly
once. PostgreSQL and a real Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager

from app import views
from app.config import Settings
from app.container import Container
from app.domain import commands
from app.faults import InjectedFault
from app.main import create_app
from tests.conftest import random_ref
from tests.integration.event_helpers import (
    Subscriber,
    allocated_in_write_model,
    allocated_row,
    handled_by,
    private_postgres_database,
    relay_until_delivered,
    running_container,
    subscribe,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

# Allocated's handlers: the read models (recorded by their own commit), and
# the publish (with nothing to write, recorded only if the event fails).
READ_MODELS = "add_allocation_to_read_model"
PUBLISH = "publish_allocated_event"


@pytest.fixture(scope="module")
async def events_postgres_url(postgres_server_url: str) -> AsyncIterator[str]:
    async with private_postgres_database(postgres_server_url) as url:
        yield url


@pytest.fixture
def settings(events_postgres_url: str, redis_url: str) -> Settings:
    # A short lease: the relay passes below find a command's events due soon
    # after it, as they would be after a crash. No relay runs on its own.
    return Settings(
        database_url=events_postgres_url,
        redis_url=redis_url,
        relay_enabled=False,
        outbox_lease=0.05,
    )


@pytest.fixture
async def container(settings: Settings) -> AsyncIterator[Container]:
    async with running_container(settings) as container:
        yield container


@pytest.fixture
async def line_allocated(redis_url: str) -> AsyncIterator[Subscriber]:
    async with subscribe(redis_url, "line_allocated") as subscriber:
        yield subscriber


async def published_for(subscriber: Subscriber, orderid: str) -> list[str]:
    """The event ids of the line_allocated messages about ``orderid`` so far."""
    return [m["event_id"] for m in await subscriber.received() if m.get("orderid") == orderid]


async def new_batch(container: Container, qty: int = 10) -> tuple[str, str]:
    sku, ref = random_ref("sku"), random_ref("batch")
    await container.bus().handle(commands.CreateBatch(ref, sku, qty, None))
    return sku, ref


async def test_a_crash_after_the_commit_loses_nothing(
    container: Container, line_allocated: Subscriber
) -> None:
    sku, ref = await new_batch(container)
    orderid = random_ref("order")
    container.faults().arm("after_commit")

    with pytest.raises(InjectedFault):
        await container.bus().handle(commands.Allocate(orderid, sku, 3))

    engine, read_engine = container.engine(), container.read_engine()
    assert await allocated_in_write_model(engine, orderid, sku) == ref
    assert await views.allocations(read_engine, orderid) == []
    assert await published_for(line_allocated, orderid) == []
    row = await allocated_row(engine, orderid)
    assert (row.pending, row.attempts) == (True, 0)
    assert await handled_by(engine, row.id) == set()

    await relay_until_delivered(container, [row.id])

    assert await views.allocations(read_engine, orderid) == [{"sku": sku, "batchref": ref}]
    assert (await views.batch(read_engine, ref) or {}).get("allocated") == 3
    assert await published_for(line_allocated, orderid) == [row.id]
    row = await allocated_row(engine, orderid)
    assert not row.pending
    assert row.last_error is None
    assert await handled_by(engine, row.id) == {READ_MODELS}


async def test_a_handler_failing_to_commit_is_run_again_alone(
    container: Container, line_allocated: Subscriber
) -> None:
    sku, ref = await new_batch(container)
    orderid = random_ref("order")
    container.faults().arm("commit:add_allocation_to_read_model")

    await container.bus().handle(commands.Allocate(orderid, sku, 3))  # the caller sees a 202

    engine, read_engine = container.engine(), container.read_engine()
    assert await views.allocations(read_engine, orderid) == []
    row = await allocated_row(engine, orderid)
    assert row.pending
    assert row.attempts == 1
    assert row.last_error is not None
    assert "add_allocation_to_read_model" in row.last_error
    assert "InjectedFault" in row.last_error
    # The publish finished, and is recorded: only the failed handler runs again.
    assert await handled_by(engine, row.id) == {PUBLISH}
    assert (await views.batch(read_engine, ref) or {}).get("allocated") == 0
    assert await published_for(line_allocated, orderid) == [row.id]

    await relay_until_delivered(container, [row.id])

    assert await views.allocations(read_engine, orderid) == [{"sku": sku, "batchref": ref}]
    assert (await views.batch(read_engine, ref) or {}).get("allocated") == 3
    assert await published_for(line_allocated, orderid) == [row.id]  # not published again
    row = await allocated_row(engine, orderid)
    assert not row.pending
    assert row.last_error is None
    assert await handled_by(engine, row.id) == {READ_MODELS, PUBLISH}


async def test_a_failed_publish_is_published_later_exactly_once(
    container: Container, line_allocated: Subscriber
) -> None:
    sku, ref = await new_batch(container)
    orderid = random_ref("order")
    container.faults().arm("publish")

    await container.bus().handle(commands.Allocate(orderid, sku, 3))

    engine, read_engine = container.engine(), container.read_engine()
    assert await views.allocations(read_engine, orderid) == [{"sku": sku, "batchref": ref}]
    assert await published_for(line_allocated, orderid) == []
    row = await allocated_row(engine, orderid)
    assert (row.pending, row.attempts) == (True, 1)
    assert row.last_error is not None
    assert PUBLISH in row.last_error
    assert await handled_by(engine, row.id) == {READ_MODELS}

    await relay_until_delivered(container, [row.id])

    assert await published_for(line_allocated, orderid) == [row.id]
    assert not (await allocated_row(engine, orderid)).pending
    assert await handled_by(engine, row.id) == {READ_MODELS}


async def test_over_http_a_crash_after_the_commit_is_an_error_but_the_write_is_kept(
    settings: Settings, line_allocated: Subscriber
) -> None:
    app = create_app(settings)
    sku, ref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    async with LifespanManager(app) as manager:
        container: Container = app.state.container
        # The app's error would otherwise be raised into the test, as in-process
        # ASGI does; a server would answer it with a 500, and so does this.
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            created = await client.post("/batches", json={"ref": ref, "sku": sku, "qty": 10})
            assert created.status_code == 201
            container.faults().arm("after_commit")

            response = await client.post(
                "/allocate", json={"orderid": orderid, "sku": sku, "qty": 2}
            )

            assert response.status_code == 500
            assert (await client.get(f"/allocations/{orderid}")).status_code == 404
            row = await allocated_row(container.engine(), orderid)
            assert row.pending

            await relay_until_delivered(container, [row.id])

            shown = await client.get(f"/allocations/{orderid}")
            assert shown.status_code == 200
            assert shown.json() == [{"sku": sku, "batchref": ref}]
            assert await published_for(line_allocated, orderid) == [row.id]
