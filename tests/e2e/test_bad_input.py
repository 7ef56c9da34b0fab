"""Malformed requests get a 4xx with a message a person can read, never a 5xx."""

from typing import Any

import httpx
import pytest

from app.entrypoints.http import problems
from app.wire import MAX_ID_LENGTH
from tests.support.refs import random_ref

JSON = {"content-type": "application/json"}


def batch(**changes: Any) -> dict[str, Any]:
    return {"ref": "b-1", "sku": "LAMP", "qty": 10, "eta": None, **changes}


def line(**changes: Any) -> dict[str, Any]:
    return {"orderid": "o-1", "sku": "LAMP", "qty": 1, **changes}


def without(body: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != field}


def case(method: str, url: str, name: str, **sent: Any) -> Any:
    return pytest.param(method, url, sent, id=name)


LONG = "x" * 100_000

BAD_REQUESTS = [
    # missing fields
    case("POST", "/allocate", "allocate-without-qty", json=without(line(), "qty")),
    case("POST", "/allocate", "allocate-without-orderid", json=without(line(), "orderid")),
    case("POST", "/add_batch", "batch-without-sku", json=without(batch(), "sku")),
    case("POST", "/batches", "batch-without-ref", json=without(batch(), "ref")),
    case("PATCH", "/batches/b-1", "patch-without-qty", json={}),
    # wrong types
    case("POST", "/allocate", "qty-string", json=line(qty="5")),
    case("POST", "/allocate", "qty-true", json=line(qty=True)),
    case("POST", "/allocate", "qty-float", json=line(qty=1.5)),
    case("POST", "/allocate", "qty-fraction-of-a-whole", json=line(qty=5.000001)),
    case("POST", "/allocate", "qty-null", json=line(qty=None)),
    case("POST", "/allocate", "sku-number", json=line(sku=123)),
    case("POST", "/allocate", "orderid-list", json=line(orderid=["o-1"])),
    case("POST", "/add_batch", "eta-number", json=batch(eta=2011)),
    case("POST", "/add_batch", "eta-true", json=batch(eta=True)),
    case("POST", "/add_batch", "ref-object", json=batch(ref={"ref": "b-1"})),
    case("PATCH", "/batches/b-1", "patch-qty-string", json={"qty": "5"}),
    # quantities out of range
    case("POST", "/allocate", "qty-zero", json=line(qty=0)),
    case("POST", "/allocate", "qty-negative", json=line(qty=-3)),
    case("POST", "/allocate", "qty-huge", json=line(qty=10**12)),
    case("POST", "/add_batch", "batch-qty-zero", json=batch(qty=0)),
    case("POST", "/add_batch", "batch-qty-huge", json=batch(qty=10**12)),
    case("POST", "/add_batch", "batch-qty-enormous", json=batch(qty=10**400)),
    case("PATCH", "/batches/b-1", "patch-qty-negative", json={"qty": -1}),
    case("PATCH", "/batches/b-1", "patch-qty-huge", json={"qty": 10**12}),
    case(
        "POST", "/allocate", "qty-nan", content=b'{"orderid":"o","sku":"s","qty":NaN}', headers=JSON
    ),
    # identifiers
    case("POST", "/allocate", "orderid-empty", json=line(orderid="")),
    case("POST", "/allocate", "orderid-blank", json=line(orderid="   ")),
    case("POST", "/add_batch", "ref-100kB", json=batch(ref=LONG)),
    case("POST", "/add_batch", "sku-256-chars", json=batch(sku="s" * 256)),
    case("POST", "/allocate", "orderid-nul", json=line(orderid="o\x00-1")),
    case("POST", "/add_batch", "sku-nul", json=batch(sku="LAMP\x00")),
    case("POST", "/add_batch", "ref-newline", json=batch(ref="b\n1")),
    case("POST", "/allocate", "sku-tab", json=line(sku="LA\tMP")),
    case("POST", "/add_batch", "ref-slash", json=batch(ref="b/1")),
    case("POST", "/allocate", "orderid-zero-width", json=line(orderid="\u200b")),
    case("POST", "/batches", "ref-dot", json=batch(ref=".")),
    case("POST", "/batches", "ref-dot-dot", json=batch(ref="..")),
    case("POST", "/allocate", "orderid-dot-dot", json=line(orderid="..")),
    case(
        "POST",
        "/allocate",
        "sku-lone-surrogate",
        content=b'{"orderid":"o","sku":"\\ud800","qty":1}',
        headers=JSON,
    ),
    # identifiers in the path
    case("GET", "/allocations/%00", "path-orderid-nul"),
    case("GET", "/batches/a%00b", "path-ref-nul"),
    case("PATCH", "/batches/a%00b", "patch-path-ref-nul", json={"qty": 1}),
    case("GET", "/batches/a%0Ab", "path-ref-newline"),
    case("GET", "/allocations/%20%20", "path-orderid-blank"),
    case("GET", "/batches/%2E", "path-ref-dot"),
    case("GET", "/batches/%2E%2E", "path-ref-dot-dot"),
    case("PATCH", "/batches/%2e%2E", "patch-path-ref-dot-dot", json={"qty": 1}),
    case("GET", "/allocations/%2E%2E/SKU", "path-orderid-dot-dot"),
    case("GET", "/products/%2E", "path-sku-dot"),
    case("GET", "/batches/" + "x" * 10_000, "path-ref-10kB"),
    # dates
    case("POST", "/add_batch", "eta-month-13", json=batch(eta="2011-13-45")),
    case("POST", "/add_batch", "eta-february-30", json=batch(eta="2011-02-30")),
    case("POST", "/add_batch", "eta-yesterday", json=batch(eta="yesterday")),
    case("POST", "/add_batch", "eta-slashes", json=batch(eta="01/02/2011")),
    case("POST", "/add_batch", "eta-empty", json=batch(eta="")),
    case("POST", "/add_batch", "eta-with-time", json=batch(eta="2011-01-01T10:30:00")),
    # bodies that are not the object asked for
    case("POST", "/allocate", "broken-json", content=b'{"orderid": ', headers=JSON),
    case("POST", "/allocate", "json-array", json=[line()]),
    case("POST", "/allocate", "json-string", json="allocate please"),
    case("POST", "/allocate", "json-null", content=b"null", headers=JSON),
    case("POST", "/add_batch", "empty-body"),
    case("POST", "/add_batch", "empty-json-body", content=b"", headers=JSON),
    case(
        "POST",
        "/allocate",
        "garbage-octets",
        content=b"\xff\xfe\x00garbage",
        headers={"content-type": "application/octet-stream"},
    ),
    case("POST", "/allocate", "garbage-as-json", content=b"\xff\xfe\x00garbage", headers=JSON),
    case("POST", "/allocate", "form-encoded", data={"orderid": "o", "sku": "s", "qty": "1"}),
    case(
        "POST",
        "/allocate",
        "deeply-nested-json",
        content=b"[" * 100_000 + b"]" * 100_000,
        headers=JSON,
    ),
    # unknown fields
    case("POST", "/add_batch", "batch-extra-field", json=batch(colour="red")),
    case("POST", "/allocate", "allocate-extra-field", json=line(priority="high")),
    case("PATCH", "/batches/b-1", "patch-extra-field", json={"qty": 1, "eta": None}),
    # no such route or method
    case("PUT", "/batches/b-1", "wrong-method", json=batch()),
    case("GET", "/no-such-thing", "unknown-path"),
]


@pytest.mark.parametrize(("method", "url", "sent"), BAD_REQUESTS)
async def test_a_bad_sentgets_a_4xx_with_a_message(
    client: httpx.AsyncClient, method: str, url: str, sent: dict[str, Any]
) -> None:
    r = await client.request(method, url, **sent)

    assert 400 <= r.status_code < 500, f"{r.status_code}: {r.text[:500]}"
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert isinstance(body, dict)
    # A problem (RFC 9457) of one of the documented types, and the book's message.
    kind = problems.TYPES[body["type"]]
    assert (
        (body["status"], body["title"]) == (r.status_code, kind.title) == (kind.status, kind.title)
    )
    assert isinstance(body["detail"], str)
    assert body["detail"].strip()
    assert body["message"] == body["detail"]
    # An answer never echoes back what was sent, at whatever size it came.
    assert len(r.content) < 2_000


@pytest.mark.parametrize(
    ("method", "url", "sent", "field"),
    [
        ("POST", "/allocate", {"json": line(qty="5")}, "qty"),
        ("POST", "/allocate", {"json": line(qty=0)}, "qty"),
        ("POST", "/allocate", {"json": without(line(), "orderid")}, "orderid"),
        ("POST", "/allocate", {"json": line(sku=123)}, "sku"),
        ("POST", "/add_batch", {"json": batch(eta="yesterday")}, "eta"),
        ("POST", "/add_batch", {"json": batch(eta="9999-12-31")}, "eta"),
        ("POST", "/add_batch", {"json": batch(ref="x" * (MAX_ID_LENGTH + 1))}, "ref"),
        ("POST", "/batches", {"json": batch(colour="red")}, "colour"),
        ("PATCH", "/batches/b-1", {"json": {"qty": -1}}, "qty"),
        ("GET", "/batches/a%00b", {}, "ref"),
        ("GET", "/allocations/%00", {}, "orderid"),
        ("POST", "/batches", {"json": batch(ref="..")}, "ref"),
        ("GET", "/batches/%2E%2E", {}, "ref"),
    ],
    ids=[
        "qty-type",
        "qty-range",
        "orderid-missing",
        "sku-type",
        "eta",
        "eta-far-future",
        "ref-length",
        "unknown-field",
        "patch-qty",
        "path-ref",
        "path-orderid",
        "ref-dot-dot",
        "path-ref-dot-dot",
    ],
)
async def test_a_422_names_the_offending_field(
    client: httpx.AsyncClient, method: str, url: str, sent: dict[str, Any], field: str
) -> None:
    r = await client.request(method, url, **sent)

    assert r.status_code == 422, r.text
    body = r.json()
    assert body["type"] == problems.INVALID_INPUT.uri
    assert field in body["detail"]
    # Each invalid field, with its own message.
    [error] = [e for e in body["errors"] if field in e["loc"]]
    assert error["message"]


async def test_a_rejected_sentchanges_nothing(client: httpx.AsyncClient) -> None:
    ref, sku, orderid = random_ref("batch"), random_ref("sku"), random_ref("order")
    for bad in [batch(ref=ref, sku=sku, qty=0), batch(ref=ref, sku=sku + "\x00")]:
        assert (await client.post("/batches", json=bad)).status_code == 422
    assert (await client.get(f"/batches/{ref}")).status_code == 404

    created = await client.post("/batches", json=batch(ref=ref, sku=sku, qty=5))
    assert created.status_code == 201
    for bad in [line(orderid=orderid, sku=sku, qty=1.5), line(orderid=orderid + "\n", sku=sku)]:
        assert (await client.post("/allocate", json=bad)).status_code == 422
    assert (await client.patch(f"/batches/{ref}", json={"qty": -5})).status_code == 422

    assert (await client.get(f"/allocations/{orderid}")).status_code == 404
    unchanged = (await client.get(f"/batches/{ref}")).json()
    assert (unchanged["purchased"], unchanged["allocated"]) == (5, 0)


async def test_a_json_body_that_is_not_utf8_is_invalid_input(client: httpx.AsyncClient) -> None:
    body = b'{"orderid": "o\xff1", "sku": "LAMP", "qty": 1}'
    r = await client.post("/allocate", content=body, headers=JSON)

    assert r.status_code == 422, r.text
    assert "not valid JSON" in r.json()["message"]


@pytest.mark.parametrize(
    ("method", "url", "allowed"),
    [
        ("PUT", "/batches/b-1", "GET, HEAD, PATCH"),
        ("DELETE", "/batches/b-1", "GET, HEAD, PATCH"),
        ("GET", "/allocate", "POST"),
        ("POST", "/allocations/o-1", "GET, HEAD"),
    ],
)
async def test_a_wrong_method_is_a_405_that_allows_every_method_of_the_path(
    client: httpx.AsyncClient, method: str, url: str, allowed: str
) -> None:
    r = await client.request(method, url)

    assert r.status_code == 405
    assert r.headers["allow"] == allowed
    assert isinstance(r.json()["message"], str)


async def test_dot_ids_are_refused_saying_why(client: httpx.AsyncClient) -> None:
    # "." and ".." would make a Location that every URL client resolves away.
    for r in [
        await client.post("/batches", json=batch(ref="..")),
        await client.get("/batches/%2E%2E"),
    ]:
        assert r.status_code == 422
        assert "must not be '..'" in r.json()["message"]


async def test_a_whole_float_quantity_is_that_integer(client: httpx.AsyncClient) -> None:
    # JSON Schema, and so the document, calls 573.0 an integer.
    ref, sku, orderid = random_ref("batch"), random_ref("sku"), random_ref("order")
    assert (
        await client.post("/batches", json=batch(ref=ref, sku=sku, qty=573.0))
    ).status_code == 201
    assert (
        await client.post("/allocate", json=line(orderid=orderid, sku=sku, qty=3.0))
    ).status_code == 202
    assert (await client.patch(f"/batches/{ref}", json={"qty": 600.0})).status_code == 202
    read = (await client.get(f"/batches/{ref}")).json()
    assert (read["purchased"], read["allocated"]) == (600, 3)
