"""One Idempotency-Key sent at once to two API processes on one database: one command."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.support.databases import query
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
                assert_one_answer(answers, 202, f"/allocations/{orderid}")
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
