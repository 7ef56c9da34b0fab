"""Who may write (API_TOKEN), and how much they may send (MAX_BODY_BYTES)."""

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from app.config import Settings
from app.entrypoints.http import problems
from app.main import create_app
from tests.support.apps import serving
from tests.support.refs import random_ref

TOKEN = "s3cret-token-for-tests-0123456789"

WRITES = [
    ("POST", "/batches", {"ref": "r", "sku": "s", "qty": 1, "eta": None}),
    ("POST", "/add_batch", {"ref": "r", "sku": "s", "qty": 1, "eta": None}),
    ("PATCH", "/batches/r", {"qty": 1}),
    ("POST", "/allocate", {"orderid": "o", "sku": "s", "qty": 1}),
]


@pytest.fixture
async def guarded(sqlite_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(create_app(Settings(database_url=sqlite_url, api_token=TOKEN))) as client:
        yield client


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
async def test_a_write_without_the_token_is_a_401(
    guarded: httpx.AsyncClient, method: str, path: str, body: dict[str, object]
) -> None:
    r = await guarded.request(method, path, json=body)

    assert r.status_code == 401
    assert r.json() == problems.body(
        problems.TOKEN_MISSING, "This route needs `Authorization: Bearer <token>`"
    )
    assert r.headers["www-authenticate"] == 'Bearer realm="allocation"'


@pytest.mark.parametrize(
    ("authorization", "kind"),
    [
        (f"Bearer {TOKEN}x", problems.TOKEN_INVALID),
        (f"Bearer {TOKEN[:-1]}", problems.TOKEN_INVALID),
        # No bearer token at all.
        ("Bearer ", problems.TOKEN_MISSING),
        (f"Basic {TOKEN}", problems.TOKEN_MISSING),
    ],
)
async def test_a_write_with_another_token_is_a_401(
    guarded: httpx.AsyncClient, authorization: str, kind: problems.ProblemType
) -> None:
    r = await guarded.post(
        "/allocate",
        json={"orderid": "o", "sku": "s", "qty": 1},
        headers={"Authorization": authorization},
    )

    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith('Bearer realm="allocation"')
    assert r.json()["type"] == kind.uri


async def test_the_token_opens_writes_and_reads_need_none(guarded: httpx.AsyncClient) -> None:
    ref, sku, orderid = random_ref("batch"), random_ref("sku"), random_ref("order")
    auth = {"Authorization": f"Bearer {TOKEN}"}

    r = await guarded.post(
        "/batches", json={"ref": ref, "sku": sku, "qty": 5, "eta": None}, headers=auth
    )
    assert r.status_code == 201, r.text
    r = await guarded.post(
        "/allocate", json={"orderid": orderid, "sku": sku, "qty": 2}, headers=auth
    )
    assert r.status_code == 202, r.text

    assert (await guarded.get(f"/allocations/{orderid}")).json() == [{"sku": sku, "batchref": ref}]
    assert (await guarded.get(f"/batches/{ref}")).status_code == 200
    assert (await guarded.get(f"/products/{sku}")).status_code == 200
    assert (await guarded.get("/ready")).status_code == 200


async def test_no_write_is_done_without_the_token(guarded: httpx.AsyncClient) -> None:
    ref = random_ref("batch")

    await guarded.post("/batches", json={"ref": ref, "sku": "s", "qty": 5, "eta": None})

    assert (await guarded.get(f"/batches/{ref}")).status_code == 404


async def test_docs_offer_authorize_for_writes_only(guarded: httpx.AsyncClient) -> None:
    spec = (await guarded.get("/openapi.json")).json()

    schemes = spec["components"]["securitySchemes"]
    assert schemes["API token"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "The service's `API_TOKEN`, when it has one set. Only writes need it.",
    }
    for method, path, _ in WRITES:
        template = "/batches/{ref}" if method == "PATCH" else path
        operation = spec["paths"][template][method.lower()]
        assert operation["security"] == [{"API token": []}]
        assert "401" in operation["responses"]
    assert "security" not in spec["paths"]["/allocations/{orderid}"]["get"]


async def test_without_a_token_writes_are_open_and_the_log_says_so(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="app.main")
    async with serving(create_app(Settings(database_url=sqlite_url))) as client:
        ref = random_ref("batch")
        r = await client.post("/batches", json={"ref": ref, "sku": "s", "qty": 1, "eta": None})

    assert r.status_code == 201
    assert "API_TOKEN is not set: anyone who can reach the API can write" in caplog.text


async def test_a_declared_body_over_the_limit_is_a_413(client: httpx.AsyncClient) -> None:
    big = b'{"orderid": "o", "sku": "s", "qty": 1, "pad": "' + b"x" * 70_000 + b'"}'

    r = await client.post("/allocate", content=big, headers={"Content-Type": "application/json"})

    assert r.status_code == 413
    assert r.json() == problems.body(
        problems.BODY_TOO_LARGE, "The request body is larger than 65536 bytes"
    )


async def test_a_streamed_body_over_the_limit_is_a_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"orderid": "o", "sku": "s", "qty": 1, "pad": "'
        for _ in range(20):
            yield b"x" * 8192
        yield b'"}'

    r = await client.post(
        "/allocate", content=chunks(), headers={"Content-Type": "application/json"}
    )

    assert r.status_code == 413
    assert r.json() == problems.body(
        problems.BODY_TOO_LARGE, "The request body is larger than 65536 bytes"
    )


async def test_a_body_within_the_limit_is_read(client: httpx.AsyncClient) -> None:
    batch = {"ref": random_ref("batch"), "sku": random_ref("sku"), "qty": 1, "eta": None}
    body = json.dumps(batch) + " " * 60_000  # whitespace: valid JSON, and large

    r = await client.post("/batches", content=body, headers={"Content-Type": "application/json"})

    assert r.status_code == 201, r.text


@pytest.mark.postgres
async def test_after_a_413_the_connection_closes_and_the_body_is_never_a_request(
    uvicorn_url: str,
) -> None:
    host, port = uvicorn_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        f"POST /holds HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        "Content-Length: 66000\r\n\r\n"
    )
    writer.write(head.encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    rest = b""
    with contextlib.suppress(ConnectionError):  # closed (or reset: the body unread)
        writer.write(b"x" * 66_000)  # the body it refused, sent all the same
        await writer.drain()
        rest = await asyncio.wait_for(reader.read(), 10)  # up to the close

    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in answer.lower()
    assert b"HTTP/1.1" not in rest  # no second answer, to a "request" made of the body
    writer.close()
