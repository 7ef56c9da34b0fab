"""A real uvicorn's life: how it starts, logs, refuses to start, and stops."""

import asyncio
import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.adapters.schema_version import SCHEMA_VERSION
from tests.support.databases import ROOT, alembic_upgrade
from tests.support.polling import eventually
from tests.support.processes import Processes, json_lines, run_cli, service_env
from tests.support.refs import random_ref
from tests.support.scenarios import add_batch
from tests.support.servers import free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def migrated_sqlite(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'allocation.db'}"
    alembic_upgrade(url)
    return url


async def test_logs_are_json_lines_one_per_request_with_its_id(
    tmp_path: Path, migrated_sqlite: str
) -> None:
    async with Processes(tmp_path) as processes:
        api = processes.api(service_env(migrated_sqlite))
        await api.start_serving()
        async with httpx.AsyncClient(base_url=api.url) as client:
            r = await client.get("/batches/none-such", headers={"X-Request-ID": "lc-404"})
            assert r.headers["x-request-id"] == "lc-404"
            sku = random_ref("sku")
            await client.post(
                "/allocate",
                json={"orderid": random_ref("order"), "sku": sku, "qty": 1},
                headers={"X-Request-ID": "lc-400"},
            )
        await api.shut_down()

    records = json_lines(api.output())
    # Everything the process logged is JSON, uvicorn's own lines too.
    assert any(r["logger"] == "uvicorn.error" for r in records), api.report()
    requests = {r["request_id"]: r for r in records if r["logger"] == "app.requests"}
    assert requests["lc-404"]["method"] == "GET"
    assert requests["lc-404"]["path"] == "/batches/none-such"
    assert requests["lc-404"]["status"] == 404
    assert requests["lc-404"]["duration_ms"] > 0
    assert requests["lc-400"]["status"] == 400
    assert "time" in requests["lc-400"]
    assert len([r for r in records if r["request_id"] == "lc-404"]) == 1
    # uvicorn's access log is off: the request line above is the only one.
    assert not any('"GET /batches/none-such' in r["message"] for r in records)


async def test_startup_fails_fast_on_an_unmigrated_database(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    async with Processes(tmp_path) as processes:
        api = processes.api(service_env(f"sqlite+aiosqlite:///{empty}"))
        api.start()
        code = await api.wait(within=20)

    assert code != 0
    assert "is not migrated" in api.output(), api.report()
    assert "allocation migrate" in api.output(), api.report()
    # Said once, in the line that says why; uvicorn's traceback of it is left out.
    assert api.output().count("is not migrated") == 1, api.report()
    assert "Traceback" not in api.output(), api.report()


async def test_startup_fails_fast_on_an_old_schema(tmp_path: Path, migrated_sqlite: str) -> None:
    engine = create_async_engine(migrated_sqlite)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    await engine.dispose()
    async with Processes(tmp_path) as processes:
        api = processes.api(service_env(migrated_sqlite))
        api.start()
        code = await api.wait(within=20)

    assert code != 0
    assert f"it has migration 0001, this code needs {SCHEMA_VERSION}" in api.output()


async def test_startup_fails_fast_when_the_database_is_unreachable(tmp_path: Path) -> None:
    nowhere = f"postgresql+asyncpg://allocation:pw@127.0.0.1:{free_port()}/allocation"
    async with Processes(tmp_path) as processes:
        api = processes.api(service_env(nowhere))
        api.start()
        code = await api.wait(within=20)

    assert code != 0
    out = api.output()
    assert "cannot reach the database at postgresql+asyncpg://allocation:***@" in out, out
    assert "pw@" not in out


async def test_the_worker_fails_fast_on_an_unmigrated_database(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()

    result = await run_cli(service_env(f"sqlite+aiosqlite:///{empty}"), "worker", within=20)

    assert result.returncode == 1
    assert "is not migrated" in result.stderr


async def test_production_refuses_a_placeholder_password(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://allocation:change-me@127.0.0.1:{free_port()}/allocation"
    async with Processes(tmp_path) as processes:
        api = processes.api(service_env(url, environment="production"))
        api.start()
        code = await api.wait(within=20)

    assert code != 0
    assert "cannot start: DATABASE_URL uses a placeholder password" in api.output()


def test_the_schema_version_is_alembics_head() -> None:
    from alembic.script import ScriptDirectory

    assert ScriptDirectory(str(ROOT / "app" / "migrations")).get_current_head() == SCHEMA_VERSION


@pytest.mark.postgres
async def test_sigterm_lets_a_request_in_flight_finish(
    tmp_path: Path, private_database: str
) -> None:
    async with Processes(tmp_path) as processes:
        api = processes.api(service_env(private_database))
        await api.start_serving()
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            sku = random_ref("sku")
            await add_batch(client, random_ref("batch"), sku, 10)
            engine = create_async_engine(private_database)
            try:
                async with engine.connect() as conn, conn.begin():
                    # Hold the product's row lock: the allocation below waits on it.
                    await conn.execute(
                        text("SELECT 1 FROM products WHERE sku = :sku FOR UPDATE"), {"sku": sku}
                    )
                    orderid = random_ref("order")
                    in_flight = asyncio.create_task(
                        client.post("/allocate", json={"orderid": orderid, "sku": sku, "qty": 1})
                    )

                    async def waiting_on_the_lock() -> bool:
                        waiting = await conn.execute(
                            text("SELECT count(*) FROM pg_locks WHERE NOT granted")
                        )
                        return bool(waiting.scalar_one())

                    await eventually(waiting_on_the_lock, 10, "the allocation never started")
                    api.send(signal.SIGTERM)
                    await asyncio.sleep(0.5)
                    assert api.running, "stopped before its request finished"
                    assert not in_flight.done()
                # The lock is gone: the request finishes, then the process stops.
                r = await in_flight
            finally:
                await engine.dispose()
        assert r.status_code == 202, r.text
        code = await api.wait(within=15)

    assert code in (0, -15), api.report()
    messages = [r["message"] for r in json_lines(api.output())]
    assert "shutting down: stopping the relay" in messages
    assert "stopped" in messages, api.report()


def every_line_is_one_json_object(output: str) -> list[dict[str, Any]]:
    lines = [line for line in output.splitlines() if not line.startswith("---- ")]
    records = [json.loads(line) for line in lines]  # fails on any line that is not JSON
    assert all(isinstance(r, dict) for r in records)
    assert "\x1b" not in output  # no terminal colours anywhere
    assert "\\u001b" not in output
    return records


async def test_the_production_command_prints_nothing_but_json_lines(
    tmp_path: Path, migrated_sqlite: str
) -> None:
    env = service_env(migrated_sqlite, log_format="json", web_concurrency=2)
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    async with Processes(tmp_path) as processes:
        api = processes.api(env)
        await api.start_serving()
        async with httpx.AsyncClient(base_url=api.url) as client:
            await client.get("/batches/none-such")
        await api.shut_down()
        refused = processes.api({**env, "DATABASE_URL": f"sqlite+aiosqlite:///{empty}"})
        refused.start()
        assert await refused.wait(within=30) != 0

    records = every_line_is_one_json_object(api.output())
    messages = [str(r["message"]) for r in records]
    assert any(m.startswith("Started parent process") for m in messages), api.report()
    assert sum(m.startswith("Started server process") for m in messages) == 2, api.report()
    # Each process says why in one line; uvicorn's traceback of it is left out
    # (one of an unforeseen error is a field of its line: tests/unit/test_logs.py).
    failed = every_line_is_one_json_object(refused.output())
    why = [r for r in failed if str(r["message"]).startswith("cannot start: ")]
    assert [r["level"] for r in why] == ["CRITICAL", "CRITICAL"], refused.report()
    assert not any("exc_info" in r for r in failed), refused.report()


@pytest.mark.parametrize(
    ("settings", "why"),
    [
        ({"ENVIRONMENT": "production"}, "cannot start: API_TOKEN is not set"),
        ({"DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/no_such_database"}, "not exist"),
        (
            {"DATABASE_URL": "postgresql://me:change-me@host/db", "ENVIRONMENT": "production"},
            "placeholder password",
        ),
    ],
    ids=["no-token", "no-database", "placeholder-password"],
)
async def test_a_refused_start_is_one_json_line_when_the_log_is_json(
    tmp_path: Path, settings: dict[str, str], why: str
) -> None:
    env = {**service_env("sqlite+aiosqlite:///unused.db", log_format="json"), **settings}
    async with Processes(tmp_path) as processes:
        refused = processes.image(env, name="refused")
        refused.start()
        assert await refused.wait(within=30) != 0
    records = every_line_is_one_json_object(refused.output())
    critical = [r for r in records if r["level"] == "CRITICAL"]
    assert len(critical) == 1, refused.report()
    assert why in str(critical[0]["message"]), refused.report()
    assert "\n" not in str(critical[0]["message"])
    assert not any("exc_info" in r or "Background on this error" in str(r) for r in records)
