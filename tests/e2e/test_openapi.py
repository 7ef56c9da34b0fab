"""/openapi.json: one snapshot of the whole, and every example it shows really answered.

The snapshot (tests/snapshots/openapi.json) is the document of a service with
an API token set; a change to it is a change of the service's contract, and
shows in review as a diff of that file. ``UPDATE_SNAPSHOTS=1`` writes it anew.
"""

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
from dependency_injector import providers
from fastapi import FastAPI

from app.adapters.database_errors import ConcurrencyError
from app.adapters.engines import build_engine
from app.config import Settings
from app.entrypoints.http import dependencies, problems, schemas
from app.entrypoints.http.idempotency import Idempotency, fingerprint
from app.main import create_app
from tests.support.apps import serving
from tests.support.servers import free_port

SNAPSHOT = Path(__file__).parents[1] / "snapshots" / "openapi.json"
TOKEN = "documented-token"


def document(token: str | None = TOKEN) -> dict[str, Any]:
    app = create_app(Settings(database_url="sqlite+aiosqlite://", api_token=token))
    openapi: dict[str, Any] = json.loads(json.dumps(app.openapi()))
    return openapi


def test_the_document_is_the_snapshot() -> None:
    text = json.dumps(document(), indent=1, sort_keys=True) + "\n"
    if os.environ.get("UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(text)
    assert text == SNAPSHOT.read_text(), "the contract changed: UPDATE_SNAPSHOTS=1 to accept"


def test_without_a_token_set_nothing_wants_one() -> None:
    openapi = document(token=None)
    assert "securitySchemes" not in openapi["components"]
    for item in openapi["paths"].values():
        for operation in item.values():
            assert "security" not in operation
            assert "401" not in operation["responses"]


def test_every_problem_type_is_in_the_errors_section() -> None:
    [errors] = [tag for tag in document()["tags"] if tag["name"] == "errors"]
    for kind in problems.TYPES.values():
        assert (
            f"| `{kind.name}` | {kind.status} | **{kind.title}**. {kind.when} |"
            in errors["description"]
        )


@pytest.fixture
def app(sqlite_url: str) -> FastAPI:
    return create_app(Settings(database_url=sqlite_url, api_token=TOKEN))


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(app) as c:
        c.headers["Authorization"] = f"Bearer {TOKEN}"
        yield c


def error_examples() -> dict[str, dict[str, Any]]:
    """Every error example the document shows, by its cause's name, and each one's schema."""
    openapi = document()
    found: dict[str, dict[str, Any]] = {}
    for item in openapi["paths"].values():
        for operation in item.values():
            for status, response in operation["responses"].items():
                if status[0] in "45":
                    content = response["content"][problems.MEDIA_TYPE]
                    schema = {**content["schema"], "components": openapi["components"]}
                    for example in content["examples"].values():
                        body = example["value"]
                        assert jsonschema_rs.validator_for(schema).is_valid(body), body
                        found[problems.TYPES[body["type"]].name] = body
    return found


Producer = Callable[[httpx.AsyncClient, FastAPI], Awaitable[httpx.Response]]
BATCH = {"ref": "batch-001", "sku": "SMALL-TABLE", "qty": 20}
LINE = {"orderid": "order-001", "sku": "SMALL-TABLE", "qty": 2}


async def _line_exists(client: httpx.AsyncClient, _: FastAPI) -> httpx.Response:
    assert (await client.post("/batches", json=BATCH)).status_code == 201
    assert (await client.post("/allocate", json=LINE)).status_code == 202
    return await client.post("/allocate", json={**LINE, "qty": 3})


async def _batch_exists(client: httpx.AsyncClient, _: FastAPI) -> httpx.Response:
    assert (await client.post("/batches", json=BATCH)).status_code == 201
    return await client.post("/batches", json={**BATCH, "qty": 21})


async def _collided(client: httpx.AsyncClient, app: FastAPI) -> httpx.Response:
    class Colliding:
        async def handle(self, command: object) -> None:
            raise ConcurrencyError("kept colliding")

    app.state.services.bus.override(providers.Object(Colliding()))
    return await client.post("/allocate", json=LINE)


async def _in_progress(client: httpx.AsyncClient, app: FastAPI) -> httpx.Response:
    keys = app.state.services.idempotency_keys()

    async def without_waiting() -> Idempotency:
        return Idempotency(keys, wait=0.0)

    app.dependency_overrides[dependencies.idempotency] = without_waiting
    route = "POST /allocate"
    await keys.reserve("busy", route, fingerprint(route, schemas.AllocateIn(**LINE)))
    return await client.post("/allocate", json=LINE, headers={"Idempotency-Key": "busy"})


async def _key_reused(client: httpx.AsyncClient, _: FastAPI) -> httpx.Response:
    await _batch_exists(client, _)
    key = {"Idempotency-Key": "reused"}
    assert (await client.post("/allocate", json=LINE, headers=key)).status_code == 202
    return await client.post("/allocate", json={**LINE, "qty": 3}, headers=key)


async def _database_gone(client: httpx.AsyncClient, app: FastAPI) -> httpx.Response:
    gone = build_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/allocation")
    app.state.services.read_source().primary = gone
    try:
        return await client.get("/batches/batch-001")
    finally:
        await gone.dispose()


async def _not_ready(client: httpx.AsyncClient, app: FastAPI) -> httpx.Response:
    gone = build_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/allocation")
    app.state.services.engine.override(providers.Object(gone))
    try:
        return await client.get("/ready")
    finally:
        await gone.dispose()


HOLD = {"holdid": "hold-001", "lines": [{"sku": "SMALL-TABLE", "qty": 2}]}


async def _hold_short(client: httpx.AsyncClient, _: FastAPI) -> httpx.Response:
    assert (await client.post("/batches", json={**BATCH, "qty": 1})).status_code == 201
    return await client.post("/holds", json=HOLD)


async def _hold_exists(client: httpx.AsyncClient, _: FastAPI) -> httpx.Response:
    assert (await client.post("/batches", json=BATCH)).status_code == 201
    assert (await client.post("/holds", json=HOLD)).status_code == 201
    return await client.post("/holds", json={**HOLD, "lines": [{"sku": "SMALL-TABLE", "qty": 1}]})


async def _hold_ended(client: httpx.AsyncClient, _: FastAPI) -> httpx.Response:
    assert (await client.post("/batches", json=BATCH)).status_code == 201
    assert (await client.post("/holds", json=HOLD)).status_code == 201
    assert (await client.delete("/holds/hold-001")).status_code == 204
    return await client.post("/holds/hold-001/extend", json={"ttl_s": 60})


def _get(url: str) -> Producer:
    return lambda client, _: client.get(url)


async def _unknown_line(client: httpx.AsyncClient, _: FastAPI) -> httpx.Response:
    assert (await client.post("/batches", json=BATCH)).status_code == 201
    return await client.post("/deallocate", json={"orderid": "order-001", "sku": "SMALL-TABLE"})


async def _stale(client: httpx.AsyncClient, _: FastAPI) -> httpx.Response:
    assert (await client.post("/batches", json=BATCH)).status_code == 201
    for qty in (21, 22, 23, 24):  # the batch moves on from version 1 to 5
        assert (await client.patch("/batches/batch-001", json={"qty": qty})).status_code == 202
    assert (await client.get("/batches/batch-001")).headers["etag"] == '"5"'
    return await client.patch("/batches/batch-001", json={"qty": 1}, headers={"If-Match": '"4"'})


PRODUCERS: dict[str, Producer] = {
    "unknown-line": _unknown_line,
    "unknown-hold": _get("/holds/hold-001"),
    "hold-short": _hold_short,
    "hold-exists": _hold_exists,
    "hold-ended": _hold_ended,
    "version-mismatch": _stale,
    "invalid-sku": lambda client, _: client.post("/allocate", json=LINE),
    "token-missing": lambda client, _: client.post(
        "/allocate", json=LINE, headers={"Authorization": ""}
    ),
    "token-invalid": lambda client, _: client.post(
        "/allocate", json=LINE, headers={"Authorization": "Bearer not-it"}
    ),
    "unknown-batch": _get("/batches/batch-001"),
    "no-allocations": _get("/allocations/order-001"),
    "no-allocation": _get("/allocations/order-001/SMALL-TABLE"),
    "unknown-order": _get("/orders/order-001"),
    "unknown-sku": _get("/products/SMALL-TABLE"),
    "batch-exists": _batch_exists,
    "line-exists": _line_exists,
    "write-collided": _collided,
    "request-in-progress": _in_progress,
    "body-too-large": lambda client, _: client.post("/allocate", json={"x": "y" * 70_000}),
    "unsupported-media-type": lambda client, _: client.post("/allocate", data=LINE),
    "invalid-input": lambda client, _: client.post("/allocate", json={"orderid": "o", "sku": "s"}),
    "invalid-json": lambda client, _: client.post(
        "/allocate", content=b"not json", headers={"content-type": "application/json"}
    ),
    "idempotency-key-reused": _key_reused,
    "database-unavailable": _database_gone,
    "not-ready": _not_ready,
}
EXAMPLES = error_examples()


@pytest.mark.parametrize("name", sorted(EXAMPLES))
async def test_an_error_example_is_what_the_service_really_answers(
    client: httpx.AsyncClient, app: FastAPI, name: str
) -> None:
    real = await PRODUCERS[name](client, app)

    assert (real.status_code, real.json()) == (EXAMPLES[name]["status"], EXAMPLES[name])
    assert real.headers["content-type"] == problems.MEDIA_TYPE


def test_every_error_example_has_a_producer() -> None:
    assert set(EXAMPLES) == set(PRODUCERS)


async def test_every_success_example_is_what_the_try_it_out_examples_get(
    client: httpx.AsyncClient,
) -> None:
    # The examples of the requests, tried in order, as the examples of the answers say.
    [warehouse, shipment] = schemas.BatchIn.model_json_schema()["examples"]
    [line] = schemas.AllocateIn.model_json_schema()["examples"]
    [change] = schemas.BatchChange.model_json_schema()["examples"]
    orderid, sku, ref = line["orderid"], line["sku"], warehouse["ref"]
    answers: dict[type[Any], list[httpx.Response]] = {
        schemas.BatchCreated: [await client.post("/add_batch", json=warehouse)],
    }
    assert (await client.post("/batches", json=shipment)).status_code == 201
    answers[schemas.AllocationAccepted] = [await client.post("/allocate", json=line)]
    too_many = {**line, "orderid": "order-002", "qty": 100}
    assert (await client.post("/allocate", json=too_many)).status_code == 202
    answers[schemas.BatchOut] = [await client.get(f"/batches/{ref}")]
    answers[schemas.Allocation] = [await client.get(f"/allocations/{orderid}/{sku}")]
    answers[schemas.Order] = [await client.get(f"/orders/{o}") for o in (orderid, "order-002")]
    answers[schemas.ProductOut] = [await client.get(f"/products/{sku}")]
    answers[schemas.Health] = [await client.get("/health")]
    answers[schemas.Readiness] = [await client.get("/ready")]
    answers[schemas.BatchAccepted] = [await client.patch(f"/batches/{ref}", json=change)]
    [hold] = schemas.HoldIn.model_json_schema()["examples"]
    placed = await client.post("/holds", json=hold)
    [extension] = schemas.HoldTime.model_json_schema()["examples"]
    extended = await client.post(f"/holds/{hold['holdid']}/extend", json=extension)
    assert extended.json()["expires_at"] > placed.json()["expires_at"]
    [confirm] = schemas.HoldConfirm.model_json_schema()["examples"]
    confirmed = await client.post(f"/holds/{hold['holdid']}/confirm", json=confirm)
    assert confirmed.status_code == 202, confirmed.text
    # The example's time is any time: the rest is what the example answers.
    [held] = schemas.Hold.model_json_schema()["examples"]
    assert {**placed.json(), "expires_at": held["expires_at"]} == held

    inputs = {schemas.BatchIn, schemas.AllocateIn, schemas.BatchChange, schemas.LineIn}
    inputs |= {schemas.HoldIn, schemas.HoldTime, schemas.HoldConfirm, schemas.Hold}
    assert set(answers) | inputs == set(schemas.EXAMPLED)
    for model, real in answers.items():
        assert [r.json() for r in real] == model.model_json_schema()["examples"], model
    assert (await client.get(f"/allocations/{orderid}")).json() == [
        schemas.Allocation.model_json_schema()["examples"][0]
    ]
