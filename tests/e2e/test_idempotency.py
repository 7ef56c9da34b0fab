"""Idempotency-Key on the POST writes, in-process, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from dependency_injector import providers

from app.config import Settings
from app.entrypoints.http import problems
from app.main import create_app
from app.service_layer.handlers import INLINE_HANDLERS
from app.service_layer.unit_of_work import SqlUnitOfWork
from tests.support.apps import serving
from tests.support.refs import random_ref

REPLAYED = "idempotent-replayed"


def key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


def batch(ref: str, sku: str, qty: int = 10) -> dict[str, object]:
    return {"ref": ref, "sku": sku, "qty": qty, "eta": None}


def line(orderid: str, sku: str, qty: int = 1) -> dict[str, object]:
    return {"orderid": orderid, "sku": sku, "qty": qty}


async def test_a_repeat_gets_the_first_answer(client: httpx.AsyncClient) -> None:
    ref, sku, headers = random_ref("batch"), random_ref("sku"), key()

    first = await client.post("/batches", json=batch(ref, sku), headers=headers)
    again = await client.post("/batches", json=batch(ref, sku), headers=headers)

    assert (first.status_code, first.json()) == (201, {"ref": ref})
    assert (again.status_code, again.content) == (first.status_code, first.content)
    assert again.headers["location"] == first.headers["location"] == f"/batches/{ref}"
    assert again.headers["content-type"] == "application/json"
    assert (REPLAYED in first.headers, again.headers[REPLAYED]) == (False, "true")


async def test_a_repeated_allocation_gets_the_first_ones_location_and_link(
    client: httpx.AsyncClient,
) -> None:
    orderid, sku, headers = random_ref("order"), random_ref("sku"), key()
    assert (await client.post("/batches", json=batch(random_ref("b"), sku))).status_code == 201

    first = await client.post("/allocate", json=line(orderid, sku), headers=headers)
    again = await client.post("/allocate", json=line(orderid, sku), headers=headers)

    assert (first.status_code, again.status_code, again.headers[REPLAYED]) == (202, 202, "true")
    assert again.headers["location"] == first.headers["location"] == f"/orders/{orderid}"
    assert again.headers["link"] == first.headers["link"] == f'</orders/{orderid}>; rel="order"'


async def test_a_repeat_does_not_run_the_command_again(client: httpx.AsyncClient) -> None:
    # Unknown sku: a 400. Once the sku exists, the same line would be
    # allocated if it ran again; the repeat answers 400 and allocates nothing.
    orderid, sku, headers = random_ref("order"), random_ref("sku"), key()
    refused = await client.post("/allocate", json=line(orderid, sku), headers=headers)
    assert refused.status_code == 400
    assert (await client.post("/batches", json=batch(random_ref("b"), sku))).status_code == 201

    again = await client.post("/allocate", json=line(orderid, sku), headers=headers)

    assert (again.status_code, again.content) == (400, refused.content)
    assert again.json() == problems.body(problems.INVALID_SKU, f"Invalid sku {sku}")
    assert again.headers["content-type"] == "application/problem+json"
    assert again.headers[REPLAYED] == "true"
    assert (await client.get(f"/allocations/{orderid}")).status_code == 404


async def test_a_repeat_answers_as_the_first_did_though_the_state_changed(
    client: httpx.AsyncClient,
) -> None:
    # Accepted with no stock to take it; stock arrives; the repeat is still
    # the first 202, and the line is still not allocated.
    orderid, sku, headers = random_ref("order"), random_ref("sku"), key()
    await client.post("/batches", json=batch(random_ref("small"), sku, qty=1))
    accepted = await client.post("/allocate", json=line(orderid, sku, qty=5), headers=headers)
    assert accepted.status_code == 202
    await client.post("/batches", json=batch(random_ref("large"), sku, qty=50))

    again = await client.post("/allocate", json=line(orderid, sku, qty=5), headers=headers)

    assert (again.status_code, again.content) == (202, accepted.content)
    assert again.headers["location"] == accepted.headers["location"] == f"/orders/{orderid}"
    assert (await client.get(f"/allocations/{orderid}")).status_code == 404


async def test_without_a_key_every_request_runs(client: httpx.AsyncClient) -> None:
    orderid, sku = random_ref("order"), random_ref("sku")
    assert (await client.post("/allocate", json=line(orderid, sku))).status_code == 400
    await client.post("/batches", json=batch(random_ref("b"), sku))

    again = await client.post("/allocate", json=line(orderid, sku))

    assert again.status_code == 202
    assert REPLAYED not in again.headers
    assert (await client.get(f"/allocations/{orderid}")).status_code == 200


async def test_the_key_with_another_body_is_a_422(client: httpx.AsyncClient) -> None:
    sku, headers = random_ref("sku"), key()
    ref = random_ref("batch")
    first = await client.post("/batches", json=batch(ref, sku, qty=10), headers=headers)

    other = await client.post("/batches", json=batch(ref, sku, qty=11), headers=headers)

    assert other.status_code == 422
    assert other.json() == problems.body(
        problems.KEY_REUSED,
        "This Idempotency-Key was already used with a different request body; "
        "use a new key for a new request",
    )
    # The key still holds the first answer.
    again = await client.post("/batches", json=batch(ref, sku, qty=10), headers=headers)
    assert (again.status_code, again.content) == (first.status_code, first.content)


async def test_the_key_on_another_route_is_a_422(client: httpx.AsyncClient) -> None:
    body, headers = batch(random_ref("batch"), random_ref("sku")), key()
    assert (await client.post("/batches", json=body, headers=headers)).status_code == 201

    r = await client.post("/add_batch", json=body, headers=headers)

    assert r.status_code == 422
    assert r.json()["type"] == problems.KEY_REUSED.uri
    assert r.json()["message"] == (
        "This Idempotency-Key was already used for POST /batches; use a new key for a new request"
    )


async def test_the_fingerprint_is_of_the_validated_body(client: httpx.AsyncClient) -> None:
    # "eta" left out and "eta": null are one request; so are the fields in any order.
    ref, sku, headers = random_ref("batch"), random_ref("sku"), key()
    first = await client.post("/batches", json={"ref": ref, "sku": sku, "qty": 3}, headers=headers)

    again = await client.post(
        "/batches", json={"qty": 3, "eta": None, "sku": sku, "ref": ref}, headers=headers
    )

    assert (first.status_code, again.status_code, again.headers[REPLAYED]) == (201, 201, "true")


@pytest.mark.parametrize(
    "value",
    [b"", b"k" * 256, "cl\u00e9".encode(), b"tab\tin-it", b"\x7f", b" padded "],
    ids=["empty", "256 characters", "not ASCII", "a tab", "DEL", "spaces at the ends"],
)
async def test_a_key_that_is_not_printable_ascii_is_a_422(
    client: httpx.AsyncClient, value: bytes
) -> None:
    r = await client.post(
        "/allocate",
        json=line(random_ref("order"), random_ref("sku")),
        headers={b"Idempotency-Key": value},
    )

    assert r.status_code == 422
    message = r.json()["message"]
    assert "Idempotency-Key" in message
    assert "must be 1 to 255 printable ASCII characters" in message


async def test_a_key_of_255_printable_characters_is_taken(client: httpx.AsyncClient) -> None:
    value = (uuid.uuid4().hex + " ~" * 120)[:254] + "!"
    body = batch(random_ref("batch"), random_ref("sku"))
    headers = {"Idempotency-Key": value}

    first = await client.post("/batches", json=body, headers=headers)
    again = await client.post("/batches", json=body, headers=headers)

    assert (first.status_code, again.status_code, again.headers[REPLAYED]) == (201, 201, "true")


async def test_concurrent_repeats_run_the_command_once(client: httpx.AsyncClient) -> None:
    ref, sku, headers = random_ref("batch"), random_ref("sku"), key()

    answers = await asyncio.gather(
        *(client.post("/batches", json=batch(ref, sku), headers=headers) for _ in range(8))
    )

    assert {(r.status_code, r.headers["location"], r.content) for r in answers} == {
        (201, f"/batches/{ref}", answers[0].content)
    }
    assert sum(REPLAYED not in r.headers for r in answers) == 1


async def test_an_expired_key_is_new_again(database_url: str) -> None:
    # A TTL far shorter than a request: the key has expired by the repeat.
    app = create_app(Settings(database_url=database_url, idempotency_ttl=0.001))
    async with serving(app, raise_app_exceptions=False) as client:
        orderid, sku, headers = random_ref("order"), random_ref("sku"), key()
        refused = await client.post("/allocate", json=line(orderid, sku), headers=headers)
        await client.post("/batches", json=batch(random_ref("b"), sku))

        again = await client.post("/allocate", json=line(orderid, sku), headers=headers)

    assert (refused.status_code, again.status_code) == (400, 202)
    assert REPLAYED not in again.headers


class FailsAfterCommit(SqlUnitOfWork):
    """Commits, then fails: as a process would that died between its commit and its answer."""

    async def _commit(self) -> None:
        await super()._commit()
        raise RuntimeError("injected failure after the commit")


async def test_a_server_error_is_not_kept_and_the_key_may_be_sent_again(
    database_url: str,
) -> None:
    app = create_app(Settings(database_url=database_url))
    container = app.state.services
    async with serving(app, raise_app_exceptions=False) as client:
        ref, sku, headers = random_ref("batch"), random_ref("sku"), key()
        # The batch is committed, then the request fails: a 500 to the client.
        with container.uow.override(
            providers.Factory(
                FailsAfterCommit,
                engine=container.engine,
                inline=INLINE_HANDLERS,
                after_commit=container.after_commit_handlers,
            )
        ):
            failed = await client.post("/batches", json=batch(ref, sku), headers=headers)

        retried = await client.post("/batches", json=batch(ref, sku), headers=headers)
        again = await client.post("/batches", json=batch(ref, sku), headers=headers)

    assert failed.status_code == 500
    # Run afresh, and harmlessly: adding an identical batch again changes nothing.
    assert (retried.status_code, REPLAYED in retried.headers) == (201, False)
    assert (again.status_code, again.headers[REPLAYED]) == (201, "true")
