"""``GET /asyncapi.json``, read by the official AsyncAPI parser, and the page that shows it.

The parser (``@asyncapi/parser``, run by node from tests/asyncapi, which
``make node-deps`` installs) must accept the document without an error or a
warning and read the book's channels, on each transport, with their fields.
What the service really publishes and accepts matches the document's schemas.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest

from app.config import Settings
from app.main import create_app
from app.wire import (
    ChangeBatchQuantityMessage,
    HeldLineMessage,
    HoldChangedMessage,
    LineAllocatedMessage,
)
from tests.support.apps import serving
from tests.support.servers import unavailable

PARSER = Path(__file__).resolve().parents[1] / "asyncapi"
TRANSPORTS = {"PubSub": "redis", "Stream": "redis", "JetStream": "nats"}


@pytest.fixture
async def http(sqlite_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(create_app(Settings(database_url=sqlite_url))) as client:
        yield client


async def parsed(document: dict[str, Any]) -> dict[str, Any]:
    """What the official parser says of ``document``: its diagnostics, and what it read."""
    node = shutil.which("node")
    if node is None:
        unavailable("node is not installed (apt-get install nodejs)")
    if not (PARSER / "node_modules" / "@asyncapi" / "parser").is_dir():
        unavailable("the AsyncAPI parser is not installed (make node-deps)")
    process = await asyncio.create_subprocess_exec(
        node,
        "parse.mjs",
        cwd=PARSER,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(json.dumps(document).encode()), 60)
    assert process.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


async def test_the_official_parser_accepts_the_document_and_reads_every_channel(
    http: httpx.AsyncClient,
) -> None:
    r = await http.get("/asyncapi.json")
    assert r.status_code == 200
    result = await parsed(r.json())

    problems = [d for d in result["diagnostics"] if d["severity"] in ("error", "warning")]
    assert problems == [], problems
    read = result["document"]
    assert read["version"] == "3.0.0"
    channels = {c["id"]: c for c in read["channels"]}
    for subject, message, fields in (
        ("changeBatchQuantity", "change_batch_quantity", {"batchref", "qty"}),
        (
            "lineAllocated",
            "line_allocated",
            {"orderid", "sku", "qty", "batchref", "event_id", "request_id"},
        ),
        ("holdChanged", "hold_changed", {"holdid", "state", "expires_at", "lines", "event_id"}),
    ):
        for transport, protocol in TRANSPORTS.items():
            channel = channels[f"{subject}{transport}"]
            assert channel["address"] == message
            assert channel["servers"] == [protocol]
            [carried] = channel["messages"]
            assert carried["name"] == message
            assert fields <= set(carried["fields"]), carried
    ins = {c for op in read["operations"] if op["action"] == "receive" for c in op["channels"]}
    outs = {c for op in read["operations"] if op["action"] == "send" for c in op["channels"]}
    assert ins == {f"changeBatchQuantity{t}" for t in TRANSPORTS}
    assert outs == {f"{event}{t}" for t in TRANSPORTS for event in ("lineAllocated", "holdChanged")}


async def test_the_schemas_are_the_models_the_code_validates_with(
    http: httpx.AsyncClient,
) -> None:
    schemas = (await http.get("/asyncapi.json")).json()["components"]["schemas"]
    message = LineAllocatedMessage(
        orderid="o-1", sku="CHAIR", qty=2, batchref="b-1", version=3, event_id="e", request_id=None
    )
    sent = message.model_dump(mode="json", exclude={"traceparent"})
    assert jsonschema_rs.validator_for(schemas["LineAllocated"]).is_valid(sent)
    entry = {k: "" if v is None else str(v) for k, v in sent.items()}
    assert jsonschema_rs.validator_for(schemas["LineAllocatedEntry"]).is_valid(entry)
    held = HoldChangedMessage(
        holdid="h-1",
        state="expired",
        expires_at=datetime(2031, 1, 1, tzinfo=UTC),
        orderid=None,
        lines=[HeldLineMessage(sku="CHAIR", qty=2, batchref=None)],
        version=2,
        event_id="e",
        request_id=None,
    ).model_dump(mode="json", exclude={"traceparent"})
    # (its lines' schema is another component: resolved as in the document)
    whole = {**schemas["HoldChanged"], "components": {"schemas": schemas}}
    assert jsonschema_rs.validator_for(whole).is_valid(held)
    as_text = {
        k: "" if v is None else json.dumps(v) if isinstance(v, list) else str(v)
        for k, v in held.items()
    }
    assert jsonschema_rs.validator_for(schemas["HoldChangedEntry"]).is_valid(as_text)
    # What the consumer refuses, the document refuses too; and what it takes.
    change = jsonschema_rs.validator_for(schemas["ChangeBatchQuantity"])
    for bad in ({"batchref": "b-1", "qty": -1}, {"batchref": "", "qty": 1}, {"qty": 1}):
        assert not change.is_valid(bad)
        with pytest.raises(ValueError, match="validation error"):
            ChangeBatchQuantityMessage.model_validate(bad)
    assert change.is_valid({"batchref": "b-1", "qty": 0})


async def test_the_page_shows_every_channel_offline_and_docs_link_to_it(
    http: httpx.AsyncClient,
) -> None:
    document = (await http.get("/asyncapi.json")).json()
    page = await http.get("/asyncapi")

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for operation in document["operations"].values():
        assert operation["title"] in page.text
    assert "event_id" in page.text
    assert "Nats-Msg-Id" in page.text
    # Nothing loaded from elsewhere: no script, no link off the service.
    assert "<script" not in page.text
    assert not re.findall(r"(?:src|href)=['\"]https?:", page.text)
    description = (await http.get("/openapi.json")).json()["info"]["description"]
    assert "[its AsyncAPI document](asyncapi)" in description
