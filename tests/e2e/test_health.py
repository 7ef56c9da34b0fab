"""/health and /ready, as an operator's probes see them."""

import time

import httpx
import pytest

from app.adapters.schema_version import StartupError
from app.config import Settings
from app.main import create_app
from tests.support.apps import serving
from tests.support.nats import running_nats
from tests.support.refs import random_ref
from tests.support.servers import free_port


async def test_health_answers_while_the_process_lives(client: httpx.AsyncClient) -> None:
    r = await client.get("/health")

    assert (r.status_code, r.json()) == (200, {"status": "ok"})


async def test_ready_when_the_database_answers(client: httpx.AsyncClient) -> None:
    r = await client.get("/ready")

    assert r.status_code == 200
    assert r.json() == {
        "status": "ready",
        "checks": {"database": "ok", "replica": "off", "redis": "off", "nats": "off"},
    }


async def test_no_start_while_the_database_is_unreachable() -> None:
    # Never "up but not ready" from the first moment: the process refuses to start.
    nowhere = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/allocation"
    started = time.monotonic()
    with pytest.raises(StartupError, match="cannot reach the database"):
        async with serving(create_app(Settings(database_url=nowhere, relay_enabled=False))):
            pass
    assert time.monotonic() - started < 12


async def test_ready_and_saying_so_while_redis_is_unreachable(sqlite_url: str) -> None:
    # Writes go on without Redis (their events wait in the outbox): still ready.
    redis_nowhere = f"redis://127.0.0.1:{free_port()}/0"
    settings = Settings(database_url=sqlite_url, redis_url=redis_nowhere, relay_enabled=False)
    async with serving(create_app(settings)) as client:
        r = await client.get("/ready")

        assert r.status_code == 200
        assert r.json()["checks"] == {
            "database": "ok",
            "replica": "off",
            "redis": "degraded: events wait in the outbox",
            "nats": "off",
        }
        batch = {"ref": random_ref("batch"), "sku": random_ref("sku"), "qty": 5, "eta": None}
        assert (await client.post("/add_batch", json=batch)).status_code == 201
        scrape = (await client.get("/metrics")).text
        assert 'allocation_dependency_up{dependency="redis"} 0.0' in scrape


async def test_ready_names_nats_when_events_go_there_and_degrades_without_it(
    sqlite_url: str,
) -> None:
    async with running_nats() as node:
        settings = Settings(
            database_url=sqlite_url, nats_url=node.url, event_brokers="nats", relay_enabled=False
        )
        async with serving(create_app(settings)) as client:
            r = await client.get("/ready")
            assert (r.status_code, r.json()["checks"]) == (
                200,
                {"database": "ok", "replica": "off", "redis": "off", "nats": "ok"},
            )
            await node.nodes[0].stop()
            r = await client.get("/ready")
    assert r.status_code == 200
    assert r.json()["checks"]["nats"] == "degraded: events wait in the outbox"
