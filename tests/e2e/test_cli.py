"""The ``allocation`` command's operator tools, run as an operator runs them."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import make_url

from tests.support.databases import query
from tests.support.polling import eventually
from tests.support.processes import Processes, dead_redis_url, describe, run_cli, service_env
from tests.support.refs import random_ref
from tests.support.scenarios import add_batch, allocate


def of_the_book(progress: str) -> list[str]:
    """The progress lines of the book's views (order_lines_view's come after them)."""
    lines = progress.splitlines()
    assert re.fullmatch(r"order_lines_view: [0-9]+/[0-9]+ rows", lines[-1]), lines
    return [line for line in lines if not line.startswith("order_lines_view: ")]


async def test_help_lists_the_commands() -> None:
    result = await run_cli(service_env("sqlite+aiosqlite:///unused.db"), "--help")

    assert result.returncode == 0, describe(result)
    for command in ("worker", "rebuild-views", "outbox"):
        assert re.search(rf"\b{command}\b", result.stdout), describe(result)


@pytest.mark.parametrize("chunk", ["0", "many"])
async def test_rebuild_views_refuses_a_bad_chunk(chunk: str) -> None:
    env = service_env("sqlite+aiosqlite:///unused.db")

    result = await run_cli(env, "rebuild-views", "--chunk", chunk)

    assert result.returncode == 2, describe(result)
    assert "chunk" in result.stderr, describe(result)


@pytest.mark.postgres
@pytest.mark.slow
async def test_outbox_on_a_fresh_database_has_nothing_pending(private_database: str) -> None:
    result = await run_cli(service_env(private_database), "outbox")

    assert result.returncode == 0, describe(result)
    assert result.stdout.splitlines() == [
        "pending: 0",
        "failing: 0  (undelivered, and a delivery failed)",
        "oldest pending: -",
        "oldest delivered: -  (kept 86400s)",
    ], describe(result)


@pytest.mark.postgres
@pytest.mark.slow
async def test_outbox_counts_pending_and_failing_events(
    private_database: str, tmp_path: Path
) -> None:
    # Three allocations whose line_allocated cannot be published: Redis is not there.
    offline = service_env(private_database, dead_redis_url())
    async with Processes(tmp_path) as processes:
        api = processes.api(offline)
        await api.start_serving()
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
            sku = random_ref("sku")
            await add_batch(http, random_ref("batch"), sku, 10, None)
            for _ in range(3):
                await allocate(http, random_ref("order"), sku, 1)

        async def tried() -> bool:
            rows = await query(
                private_database, "SELECT count(*) FROM outbox WHERE last_error IS NOT NULL"
            )
            return bool(rows[0][0])

        await eventually(tried, 10, processes.report)
        await api.shut_down()
    env = service_env(private_database)

    result = await run_cli(env, "outbox")

    assert result.returncode == 0, describe(result)
    lines = result.stdout.splitlines()
    pending, failing, oldest, delivered = lines[:4]
    assert pending == "pending: 3", describe(result)
    [(attempted,)] = await query(
        private_database, "SELECT count(*) FROM outbox WHERE completed_at IS NULL AND attempts >= 1"
    )
    assert attempted >= 1
    assert failing == f"failing: {attempted}  (undelivered, and a delivery failed)", describe(
        result
    )
    assert re.fullmatch(r"oldest pending: \d+\.\ds", oldest), describe(result)
    assert delivered == "oldest delivered: -  (kept 86400s)", describe(result)
    # Each failing event is listed with why it fails: here, no Redis to publish to.
    listed = lines[4:]
    assert len(listed) == attempted, describe(result)
    for line in listed:
        assert re.match(
            r"  Allocated [0-9a-f]{32}: \d+ attempts?; publish_allocated_event: ", line
        ), describe(result)


@pytest.mark.postgres
@pytest.mark.slow
async def test_outbox_says_when_pruning_is_behind(private_database: str) -> None:
    # An event delivered two days ago, kept for one: the relay's pruning is not keeping up.
    await query(
        private_database,
        "INSERT INTO outbox (id, type, payload, created_at, available_at, completed_at)"
        " VALUES ('0123456789abcdef0123456789abcdef', 'OutOfStock', '{}',"
        " :then, :then, :then)",
        then=datetime.now(UTC).replace(tzinfo=None) - timedelta(days=2),
    )

    result = await run_cli(service_env(private_database), "outbox")

    assert result.returncode == 0, describe(result)
    assert result.stdout.splitlines()[-1].startswith("pruning is behind: events delivered"), (
        describe(result)
    )


@pytest.mark.postgres
@pytest.mark.slow
async def test_outbox_on_a_missing_database_fails(postgres_server_url: str) -> None:
    missing = (
        make_url(postgres_server_url)
        .set(drivername="postgresql+asyncpg", database=f"missing_{uuid.uuid4().hex[:10]}")
        .render_as_string(hide_password=False)
    )

    result = await run_cli(service_env(missing), "outbox")

    assert result.returncode != 0, describe(result)
    assert "pending" not in result.stdout, describe(result)


@pytest.mark.postgres
@pytest.mark.slow
async def test_rebuild_views_on_an_empty_database(private_database: str) -> None:
    result = await run_cli(service_env(private_database), "rebuild-views")

    assert result.returncode == 0, describe(result)
    assert result.stdout == "views rebuilt\n", describe(result)
    assert result.stderr.splitlines() == [
        "batches_view: 0/0 rows",
        "allocations_view: 0/0 rows",
        "order_lines_view: 0/0 rows",
    ], describe(result)


@pytest.mark.postgres
@pytest.mark.slow
async def test_rebuild_views_prints_progress_and_repairs_corrupted_views(
    private_database: str, tmp_path: Path
) -> None:
    env = service_env(private_database)
    sku, other = random_ref("sku"), random_ref("sku")
    warehouse, shipment, elsewhere = random_ref("wh"), random_ref("ship"), random_ref("other")
    orders = [random_ref("order") for _ in range(3)]
    gone = random_ref("gone")
    async with Processes(tmp_path) as processes:
        api = processes.api(env)
        await api.start_serving()
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
            await add_batch(http, warehouse, sku, 10, None)
            await add_batch(http, shipment, sku, 10, "2031-01-01")
            await add_batch(http, elsewhere, other, 5, None)
            await allocate(http, orders[0], sku, 4)
            await allocate(http, orders[1], sku, 8)  # does not fit: the shipment
            await allocate(http, orders[2], other, 2)
            await allocate(http, gone, other, 3)
            # The batch shrinks: one of its lines is deallocated, and has nowhere to go.
            r = await http.patch(f"/batches/{elsewhere}", json={"qty": 2})
            assert r.status_code == 202, r.text

            async def reads() -> dict[str, tuple[int, Any]]:
                answers: dict[str, tuple[int, Any]] = {}
                for orderid in [*orders, gone]:
                    r = await http.get(f"/allocations/{orderid}")
                    answers[orderid] = (r.status_code, r.json())
                for ref in (warehouse, shipment, elsewhere):
                    r = await http.get(f"/batches/{ref}")
                    answers[ref] = (r.status_code, r.json())
                return answers

            right = await reads()
            assert right[orders[0]] == (200, [{"sku": sku, "batchref": warehouse}])
            assert right[orders[1]] == (200, [{"sku": sku, "batchref": shipment}])
            held = [o for o in (orders[2], gone) if right[o][0] == 200]
            assert len(held) == 1, right
            [allocated_lines] = await query(private_database, "SELECT count(*) FROM allocations")
            assert allocated_lines == (3,)

            # Rebuilt as they are: the same answers, and progress, two rows at a time.
            result = await run_cli(env, "rebuild-views", "--chunk", "2")

            assert result.returncode == 0, describe(result)
            assert result.stdout == "views rebuilt\n", describe(result)
            assert of_the_book(result.stderr) == [
                "batches_view: 0/3 rows",
                "batches_view: 2/3 rows",
                "batches_view: 3/3 rows",
                "allocations_view: 0/3 rows",
                "allocations_view: 2/3 rows",
                "allocations_view: 3/3 rows",
            ], describe(result)
            assert await reads() == right

            # Corrupted by hand, which the answers show...
            await query(
                private_database,
                "UPDATE allocations_view SET batchref = 'wrong' WHERE orderid = :o",
                o=orders[0],
            )
            await query(
                private_database,
                "UPDATE batches_view SET allocated = 99 WHERE reference = :ref",
                ref=shipment,
            )
            await query(
                private_database, "DELETE FROM allocations_view WHERE orderid = :o", o=orders[1]
            )
            corrupted = await reads()
            assert corrupted[orders[0]] == (200, [{"sku": sku, "batchref": "wrong"}])
            assert corrupted[orders[1]][0] == 404
            assert corrupted[shipment][1]["allocated"] == 99

            # ...and rebuilt right.
            result = await run_cli(env, "rebuild-views")

            assert result.returncode == 0, describe(result)
            assert result.stdout == "views rebuilt\n", describe(result)
            assert of_the_book(result.stderr) == [
                "batches_view: 0/3 rows",
                "batches_view: 3/3 rows",
                "allocations_view: 0/3 rows",
                "allocations_view: 3/3 rows",
            ], describe(result)
            assert await reads() == right
            rows = await query(
                private_database,
                "SELECT batchref FROM allocations_view WHERE orderid = :o",
                o=orders[0],
            )
            assert rows == [(warehouse,)]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def own_database(request: pytest.FixtureRequest) -> str:
    """The embedded default's SQLite, or a PostgreSQL database of the test's own."""
    url: str = request.getfixturevalue(
        "sqlite_url" if request.param == "sqlite" else "private_database"
    )
    return url


@pytest.mark.slow
async def test_reconcile_finds_no_drift_after_the_books_flow_and_names_each_it_finds(
    own_database: str, tmp_path: Path
) -> None:
    url, env = own_database, service_env(own_database)
    sku, ref = random_ref("sku"), random_ref("batch")
    async with Processes(tmp_path) as processes:
        api = processes.api(env)
        await api.start_serving()
        async with httpx.AsyncClient(base_url=api.url, timeout=10) as http:
            await add_batch(http, ref, sku, 10)
            await allocate(http, random_ref("order"), sku, 3)
            cancelled = random_ref("order")
            await allocate(http, cancelled, sku, 2)
            assert (
                await http.post("/deallocate", json={"orderid": cancelled, "sku": sku})
            ).status_code == 202
            assert (await http.patch(f"/batches/{ref}", json={"qty": 12})).status_code == 202

    clean = await run_cli(env, "reconcile")
    assert clean.returncode == 0, describe(clean)
    assert clean.stdout == "no drift: 1 batches, 1 allocated lines, 0 holds, 5 ledger rows\n"

    # A counter changed around the service, and a read model row lost.
    await query(url, "UPDATE batches SET allocated_quantity = 7 WHERE reference = :r", r=ref)
    await query(url, "DELETE FROM batches_view WHERE reference = :r", r=ref)
    found = await run_cli(env, "reconcile")
    assert found.returncode == 1, describe(found)
    assert found.stdout.splitlines() == [
        f"batch {ref}: purchased 12, allocated 7, held 0; its ledger rows add up to "
        "purchased 12, allocated 3, held 0",
        f"batch {ref}: not in batches_view",
    ]
    assert found.stderr.strip().endswith("2 drifts found")
