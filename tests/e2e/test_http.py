"""HTTP as any client expects it, against a real uvicorn: HEAD, the front page, JSON bodies."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.entrypoints.http import problems
from tests.support.refs import random_ref

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

# What differs between two answers to the same request, whatever it is.
PER_ANSWER = {"date", "x-request-id"}


@pytest.fixture
async def document(http: httpx.AsyncClient) -> dict[str, Any]:
    r = await http.get("/openapi.json")
    assert r.status_code == 200
    schema: dict[str, Any] = r.json()
    return schema


async def reads(http: httpx.AsyncClient, document: dict[str, Any]) -> list[str]:
    """A URL of each GET of the document, naming what one batch, order and hold made exist."""
    sku, ref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    assert (await http.post("/batches", json={"ref": ref, "sku": sku, "qty": 5})).status_code == 201
    line = {"orderid": orderid, "sku": sku, "qty": 1}
    assert (await http.post("/allocate", json=line)).status_code == 202
    holdid = random_ref("hold")
    hold = {"holdid": holdid, "lines": [{"sku": sku, "qty": 1}]}
    assert (await http.post("/holds", json=hold)).status_code == 201
    ids = {"ref": ref, "sku": sku, "orderid": orderid, "holdid": holdid}
    paths = [path for path, item in document["paths"].items() if "get" in item]
    return [path.format(**ids) for path in paths] + ["/", "/docs", "/redoc", "/openapi.json"]


def headers_of(r: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in r.headers.items() if name not in PER_ANSWER}


async def test_head_answers_every_read_as_its_get_does_without_the_body(
    http: httpx.AsyncClient, document: dict[str, Any]
) -> None:
    urls = await reads(http, document)
    urls += [f"/batches/{random_ref('none')}", "/no-such-route"]  # the errors too
    for url in urls:
        got = await http.get(url)
        head = await http.head(url)

        assert head.status_code == got.status_code, url
        assert head.content == b"", url
        if url == "/metrics":  # counts itself: the same headers but the length
            assert headers_of(head).keys() == headers_of(got).keys()
            continue
        assert headers_of(head) == headers_of(got), url
        assert int(head.headers["content-length"]) == len(got.content), url


async def test_head_is_no_operation_of_its_own_in_the_document(document: dict[str, Any]) -> None:
    assert not [path for path, item in document["paths"].items() if "head" in item]


async def test_head_of_a_write_only_path_is_a_405_that_allows_its_method(
    http: httpx.AsyncClient,
) -> None:
    r = await http.head("/allocate")

    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert r.headers["content-type"] == problems.MEDIA_TYPE


async def test_the_front_page_leads_to_the_docs(http: httpx.AsyncClient) -> None:
    r = await http.get("/")

    assert r.status_code == 307
    # A path, not a URL naming a host: right behind any proxy (test_proxy.py: a prefix too).
    assert r.headers["location"] == "/docs"
    docs = await http.get(r.headers["location"])
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (None, '{"ref": "REF", "sku": "s", "qty": 1}'),  # JSON, but not said to be
        ("text/plain", '{"ref": "REF", "sku": "s", "qty": 1}'),
        ("application/x-www-form-urlencoded", "ref=REF&sku=s&qty=1"),
        ("application/octet-stream", ""),
        ("text/plain", "{ not json"),
    ],
    ids=["none", "text", "form", "octets", "not-json-either"],
)
async def test_a_write_without_a_json_content_type_is_a_415(
    http: httpx.AsyncClient, content_type: str | None, body: str
) -> None:
    ref = random_ref("batch")
    headers = {"content-type": content_type} if content_type else {}

    r = await http.post("/batches", content=body.replace("REF", ref).encode(), headers=headers)

    assert r.status_code == 415, r.text
    assert r.headers["content-type"] == problems.MEDIA_TYPE
    assert r.json()["type"] == problems.NOT_JSON_CONTENT.uri
    assert (await http.get(f"/batches/{ref}")).status_code == 404  # nothing was done


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
async def test_json_by_any_spelling_is_taken(http: httpx.AsyncClient, content_type: str) -> None:
    ref = random_ref("batch")
    body = f'{{"ref": "{ref}", "sku": "s", "qty": 1}}'.encode()

    r = await http.post("/batches", content=body, headers={"content-type": content_type})

    assert r.status_code == 201, r.text
