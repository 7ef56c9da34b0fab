"""Errors as a calling service meets them: RFC 9457 problems, told apart by ``type``.

Against a real uvicorn (two workers, PostgreSQL): every error a caller can
provoke is ``application/problem+json`` with the type of its cause, the
documented title and status, ``detail`` and the book's ``message``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest

from app.adapters.engines import build_engine
from app.adapters.idempotency import SqlIdempotencyKeys
from app.adapters.liveness import for_engine as liveness_of
from app.config import Settings
from app.entrypoints.http import problems, schemas
from app.entrypoints.http.idempotency import fingerprint
from app.entrypoints.http.problems import ProblemType
from app.main import create_app
from tests.support.apps import serving
from tests.support.faults import crash_after_commit
from tests.support.refs import random_ref

pytestmark = pytest.mark.slow


def assert_problem(r: httpx.Response, kind: ProblemType) -> dict[str, Any]:
    assert r.status_code == kind.status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert (body["type"], body["title"], body["status"]) == (kind.uri, kind.title, kind.status)
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert body["message"] == body["detail"]  # the book's member, for its clients
    return body


@pytest.mark.postgres
async def test_each_refusal_of_a_write_names_its_cause(http: httpx.AsyncClient) -> None:
    ref, sku, orderid = random_ref("batch"), random_ref("sku"), random_ref("order")
    batch = {"ref": ref, "sku": sku, "qty": 10, "eta": None}
    line = {"orderid": orderid, "sku": sku, "qty": 2}

    assert_problem(await http.post("/allocate", json=line), problems.INVALID_SKU)
    assert (await http.post("/batches", json=batch)).status_code == 201
    assert_problem(await http.post("/batches", json={**batch, "qty": 11}), problems.BATCH_EXISTS)
    assert (await http.post("/allocate", json=line)).status_code == 202
    assert_problem(await http.post("/allocate", json={**line, "qty": 3}), problems.LINE_EXISTS)
    unknown = random_ref("batch")
    assert_problem(await http.patch(f"/batches/{unknown}", json={"qty": 1}), problems.UNKNOWN_BATCH)

    key = {"Idempotency-Key": random_ref("key")}
    assert (await http.post("/allocate", json=line, headers=key)).status_code == 202
    reused = await http.post("/allocate", json={**line, "qty": 3}, headers=key)
    assert_problem(reused, problems.KEY_REUSED)

    big = {**line, "pad": "x" * 70_000}
    assert_problem(await http.post("/allocate", json=big), problems.BODY_TOO_LARGE)


@pytest.mark.postgres
async def test_invalid_input_lists_each_field_with_its_own_message(
    http: httpx.AsyncClient,
) -> None:
    r = await http.post("/allocate", json={"orderid": "..", "sku": "s", "qty": 0})

    body = assert_problem(r, problems.INVALID_INPUT)
    by_field = {tuple(e["loc"]): e["message"] for e in body["errors"]}
    assert set(by_field) == {("body", "orderid"), ("body", "qty")}
    assert "must not be '..'" in by_field["body", "orderid"]
    assert "greater than 0" in by_field["body", "qty"]
    assert body["detail"] == f"body.orderid: {by_field['body', 'orderid']}"

    broken = await http.post(
        "/allocate", content=b'{"orderid": ', headers={"content-type": "application/json"}
    )
    assert "errors" not in assert_problem(broken, problems.INVALID_JSON)


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/batches/{id}", problems.UNKNOWN_BATCH),
        ("/allocations/{id}", problems.NO_ALLOCATIONS),
        ("/allocations/{id}/SMALL-TABLE", problems.NO_ALLOCATION),
        ("/orders/{id}", problems.UNKNOWN_ORDER),
        ("/products/{id}", problems.UNKNOWN_SKU),
        ("/no-such-route/{id}", problems.NOT_FOUND),
    ],
)
async def test_each_read_of_nothing_names_what_it_did_not_find(
    http: httpx.AsyncClient, path: str, kind: ProblemType
) -> None:
    assert_problem(await http.get(path.format(id=random_ref("none"))), kind)


@pytest.mark.postgres
async def test_a_method_the_path_does_not_take_is_a_problem_with_allow(
    http: httpx.AsyncClient,
) -> None:
    r = await http.delete(f"/batches/{random_ref('batch')}")

    assert_problem(r, problems.METHOD_NOT_ALLOWED)
    assert r.headers["allow"] == "GET, HEAD, PATCH"


@pytest.mark.postgres
async def test_a_request_still_in_progress_is_a_409_of_its_own(
    http: httpx.AsyncClient, postgres_url: str
) -> None:
    # The first request with this key is running in a process that lives (this
    # one, with the reservation in the database): the repeat waits, then gives up.
    line = schemas.AllocateIn(orderid=random_ref("order"), sku=random_ref("sku"), qty=1)
    key = random_ref("key")
    engine = build_engine(postgres_url)
    liveness = liveness_of(engine)
    await liveness.start()
    try:
        keys = SqlIdempotencyKeys(engine, liveness, ttl=timedelta(hours=1))
        await keys.reserve(key, "POST /allocate", fingerprint("POST /allocate", line))
        r = await http.post("/allocate", json=line.model_dump(), headers={"Idempotency-Key": key})
    finally:
        await liveness.stop()
        await engine.dispose()

    body = assert_problem(r, problems.REQUEST_IN_PROGRESS)
    assert body["detail"] == problems.REQUEST_IN_PROGRESS.detail
    assert r.headers["retry-after"] == "1"
    assert body["type"] != problems.LINE_EXISTS.uri != problems.WRITE_COLLIDED.uri


async def test_a_fault_of_the_service_is_a_problem_too(sqlite_url: str) -> None:
    # No relay: its passes are units of work too, and could take the fault first.
    app = create_app(Settings(database_url=sqlite_url, relay_enabled=False))
    sku = random_ref("sku")
    async with serving(app, raise_app_exceptions=False) as client:
        batch = {"ref": random_ref("batch"), "sku": sku, "qty": 10}
        assert (await client.post("/batches", json=batch)).status_code == 201
        crash_after_commit(app.state.services)

        r = await client.post("/allocate", json={"orderid": "o", "sku": sku, "qty": 1})

    assert r.status_code == 500
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json() == problems.example(problems.INTERNAL_ERROR)
