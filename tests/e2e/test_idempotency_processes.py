"""One Idempotency-Key on two API processes of one database: one command, even after a crash."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.databases import query
from tests.support.polling import eventually
from tests.support.processes import Api, Processes, service_env
from tests.support.refs import random_ref

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROUNDS = 10  # keys of each kind
SENDS = 3  # copies of each request to each API, all at once


async def send_everywhere(
    http: httpx.AsyncClient, apis: list[Api], path: str, body: dict[str, object]
) -> list[httpx.Response]:
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    return await asyncio.gather(
        *(
            http.post(f"{api.url}{path}", json=body, headers=headers)
            for _ in range(SENDS)
            for api in apis
        )
    )


def assert_one_answer(answers: list[httpx.Response], status: int, location: str) -> None:
    assert {(r.status_code, r.headers["location"], r.content) for r in answers} == {
        (status, location, answers[0].content)
    }, [(r.status_code, r.text) for r in answers]
    # One request ran the command; every other one got its recorded answer.
    assert sum("idempotent-replayed" not in r.headers for r in answers) == 1


async def test_concurrent_repeats_on_two_processes_run_the_command_once(
    private_database: str, tmp_path: Path
) -> None:
    async with Processes(tmp_path) as processes:
        apis = [processes.api(service_env(private_database), name=f"api-{n}") for n in (1, 2)]
        await asyncio.gather(*(api.start_serving() for api in apis))
        refs, orderids = [], []
        async with httpx.AsyncClient(timeout=30) as http:
            for _ in range(ROUNDS):
                ref, sku, orderid = random_ref("batch"), random_ref("sku"), random_ref("order")
                batch = {"ref": ref, "sku": sku, "qty": 100, "eta": None}
                answers = await send_everywhere(http, apis, "/batches", batch)
                assert_one_answer(answers, 201, f"/batches/{ref}")

                line = {"orderid": orderid, "sku": sku, "qty": 2}
                answers = await send_everywhere(http, apis, "/allocate", line)
                assert_one_answer(answers, 202, f"/orders/{orderid}")
                refs.append(ref)
                orderids.append(orderid)

        # Each command ran once: one batch per reference, one Allocated per order.
        batches = Counter(
            ref for (ref,) in await query(private_database, "SELECT reference FROM batches")
        )
        assert batches == Counter(refs), processes.report()
        events = Counter(
            payload["orderid"]
            for (payload,) in await query(
                private_database, "SELECT payload FROM outbox WHERE type = 'Allocated'"
            )
        )
        assert events == Counter(orderids), processes.report()
        answered = await query(
            private_database, "SELECT status, count(*) FROM idempotency_keys GROUP BY status"
        )
        assert sorted(answered) == [(201, ROUNDS), (202, ROUNDS)]


async def test_a_key_whose_process_died_mid_request_is_answered_within_seconds(
    private_database: str, tmp_path: Path
) -> None:
    sku, ref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    key = {"Idempotency-Key": str(uuid.uuid4())}
    line = {"orderid": orderid, "sku": sku, "qty": 2}
    engine = create_async_engine(private_database)
    async with Processes(tmp_path) as processes:
        doomed, survivor = (processes.api(service_env(private_database), name=n) for n in "ab")
        await asyncio.gather(doomed.start_serving(), survivor.start_serving())
        async with httpx.AsyncClient(timeout=30) as http:
            batch = {"ref": ref, "sku": sku, "qty": 100, "eta": None}
            assert (await http.post(f"{doomed.url}/batches", json=batch)).status_code == 201
            async with engine.connect() as holder:
                # The product's row lock held: the allocation waits on it, mid-request.
                await holder.execute(
                    text("SELECT 1 FROM products WHERE sku = :sku FOR UPDATE"), {"sku": sku}
                )
                first = asyncio.create_task(
                    http.post(f"{doomed.url}/allocate", json=line, headers=key)
                )

                async def reserved() -> bool:
                    rows = await query(
                        private_database,
                        "SELECT 1 FROM idempotency_keys WHERE idempotency_key = :key",
                        key=key["Idempotency-Key"],
                    )
                    return bool(rows)

                await eventually(reserved, 5, processes.report)
                await doomed.kill()
                killed_at = time.monotonic()
                await holder.rollback()
            with contextlib.suppress(httpx.HTTPError):
                await first
            retry = await http.post(f"{survivor.url}/allocate", json=line, headers=key)
            answered_in = time.monotonic() - killed_at
    await engine.dispose()

    assert retry.status_code == 202, retry.text
    assert answered_in <= 5, f"answered {answered_in:.1f}s after the crash"
    allocated = await query(
        private_database, "SELECT count(*) FROM order_lines WHERE orderid = :o", o=orderid
    )
    assert allocated == [(1,)]
