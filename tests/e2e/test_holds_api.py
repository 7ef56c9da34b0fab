"""Holds over HTTP: kept out of reach, every line or none, confirmed, released, expired.

The app in-process on PostgreSQL (the ``client`` fixture), its background work
running: the holds' deadlines are its to keep, with no request.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import httpx

from app.config import Settings
from app.entrypoints.http import problems
from app.main import create_app
from tests.support.apps import serving
from tests.support.databases import query
from tests.support.refs import random_ref
from tests.support.scenarios import add_batch, allocate


async def hold(
    client: httpx.AsyncClient, holdid: str, lines: dict[str, int], ttl_s: int = 600
) -> httpx.Response:
    body = {"holdid": holdid, "lines": [{"sku": s, "qty": q} for s, q in lines.items()]}
    return await client.post("/holds", json={**body, "ttl_s": ttl_s})


async def available(client: httpx.AsyncClient, sku: str) -> int:
    r = await client.get(f"/products/{sku}")
    assert r.status_code == 200, r.text
    product: dict[str, Any] = r.json()
    return int(product["available_now"] + product["incoming"])


async def test_a_hold_keeps_its_units_out_of_reach_of_allocations(
    client: httpx.AsyncClient,
) -> None:
    sku, ref, holdid = random_ref("sku"), random_ref("batch"), random_ref("hold")
    await add_batch(client, ref, sku, 5)

    r = await hold(client, holdid, {sku: 4})

    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/holds/{holdid}"
    body = r.json()
    assert (body["holdid"], body["state"], body["orderid"]) == (holdid, "held", None)
    assert body["lines"] == [{"sku": sku, "qty": 4, "batchref": ref}]
    assert (await client.get(r.headers["location"])).json() == body
    batch = (await client.get(f"/batches/{ref}")).json()
    assert (batch["held"], batch["available"], batch["allocated"]) == (4, 1, 0)
    assert await available(client, sku) == 1
    # What is left is all an allocation may take.
    await allocate(client, (big := random_ref("order")), sku, 2)
    assert (await client.get(f"/orders/{big}")).json()["lines"][0]["state"] == "out_of_stock"
    await allocate(client, (small := random_ref("order")), sku, 1)
    assert (await client.get(f"/orders/{small}")).json()["lines"][0]["state"] == "allocated"
    # The same hold again is the same hold; other lines under its id are a 409.
    again = await hold(client, holdid, {sku: 4})
    assert (again.status_code, again.json()) == (201, body)
    other = await hold(client, holdid, {sku: 3})
    assert other.status_code == 409
    assert other.json()["type"] == problems.HOLD_EXISTS.uri


async def test_a_line_that_cannot_be_held_holds_nothing_on_any_line(
    client: httpx.AsyncClient,
) -> None:
    plenty, scarce = random_ref("sku-plenty"), random_ref("sku-scarce")
    await add_batch(client, random_ref("batch"), plenty, 10)
    await add_batch(client, random_ref("batch"), scarce, 2)

    r = await hold(client, random_ref("hold"), {plenty: 5, scarce: 3})

    assert r.status_code == 409
    assert r.json()["type"] == problems.HOLD_SHORT.uri
    assert r.json()["short"] == [scarce]
    assert (await available(client, plenty), await available(client, scarce)) == (10, 2)
    unknown = await hold(client, random_ref("hold"), {plenty: 1, random_ref("nosuch"): 1})
    assert unknown.status_code == 400
    assert unknown.json()["type"] == problems.INVALID_SKU.uri
    assert await available(client, plenty) == 10


async def test_confirming_allocates_each_line_in_the_batch_that_held_it(
    client: httpx.AsyncClient,
) -> None:
    sku, other = random_ref("sku"), random_ref("sku")
    early, late, spare = random_ref("batch"), random_ref("batch"), random_ref("batch")
    await add_batch(client, early, sku, 3)
    await add_batch(client, late, sku, 10, "2031-01-01")
    await add_batch(client, spare, other, 1)
    holdid, orderid = random_ref("hold"), random_ref("order")
    placed = await hold(client, holdid, {sku: 3, other: 1})
    held_in = {line["sku"]: line["batchref"] for line in placed.json()["lines"]}
    assert held_in == {sku: early, other: spare}

    r = await client.post(f"/holds/{holdid}/confirm", json={"orderid": orderid})

    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/orders/{orderid}"
    lines = (await client.get(f"/orders/{orderid}")).json()["lines"]
    assert sorted((line["sku"], line["state"], line["batchref"]) for line in lines) == sorted(
        [(sku, "allocated", early), (other, "allocated", spare)]
    )
    confirmed = (await client.get(f"/holds/{holdid}")).json()
    assert (confirmed["state"], confirmed["orderid"]) == ("confirmed", orderid)
    assert (await client.get(f"/batches/{early}")).json()["held"] == 0
    assert await available(client, sku) == 10
    again = await client.post(f"/holds/{holdid}/confirm", json={"orderid": orderid})
    assert again.status_code == 202
    assert await available(client, sku) == 10
    elsewhere = await client.post(f"/holds/{holdid}/confirm", json={"orderid": "another"})
    assert elsewhere.status_code == 409
    assert elsewhere.json()["type"] == problems.HOLD_ENDED.uri
    # The ledger tells it: held, confirmed, then allocated to the order.
    kinds = [
        (e["kind"], e["holdid"], e["orderid"], e["qty"])
        for e in (await client.get(f"/products/{sku}/history")).json()["items"]
        if e["kind"] != "added"
    ]
    assert kinds == [
        ("held", holdid, None, -3),
        ("confirmed", holdid, None, 3),
        ("allocated", None, orderid, -3),
    ]


async def test_releasing_gives_the_units_back_and_ends_the_hold(
    client: httpx.AsyncClient,
) -> None:
    sku, holdid = random_ref("sku"), random_ref("hold")
    await add_batch(client, random_ref("batch"), sku, 4)
    await hold(client, holdid, {sku: 4})
    assert await available(client, sku) == 0

    r = await client.delete(f"/holds/{holdid}")

    assert r.status_code == 204
    assert await available(client, sku) == 4
    assert (await client.get(f"/holds/{holdid}")).json()["state"] == "released"
    assert (await client.delete(f"/holds/{holdid}")).status_code == 204
    assert await available(client, sku) == 4
    for action, body in (("extend", {"ttl_s": 60}), ("confirm", {"orderid": "o"})):
        ended = await client.post(f"/holds/{holdid}/{action}", json=body)
        assert ended.status_code == 409, action
        assert ended.json()["type"] == problems.HOLD_ENDED.uri
    unknown = await client.delete(f"/holds/{random_ref('hold')}")
    assert unknown.status_code == 404
    assert unknown.json()["type"] == problems.UNKNOWN_HOLD.uri
    assert (await client.get(f"/holds/{random_ref('hold')}")).status_code == 404


async def test_a_hold_expires_by_itself_within_two_seconds_of_its_time(
    client: httpx.AsyncClient,
) -> None:
    sku, holdid = random_ref("sku"), random_ref("hold")
    await add_batch(client, random_ref("batch"), sku, 3)
    placed = (await hold(client, holdid, {sku: 3}, ttl_s=1)).json()
    expires_at = datetime.fromisoformat(placed["expires_at"]).timestamp()

    # Nothing asks about the hold: only the stock is read.
    while await available(client, sku) != 3:
        assert time.time() < expires_at + 3, "the hold's units were not freed by itself"
        await asyncio.sleep(0.05)

    assert time.time() - expires_at <= 2 + 1
    assert (await client.get(f"/holds/{holdid}")).json()["state"] == "expired"
    late = await client.post(f"/holds/{holdid}/confirm", json={"orderid": random_ref("order")})
    assert late.status_code == 409
    assert late.json()["type"] == problems.HOLD_ENDED.uri
    history = (await client.get(f"/products/{sku}/history")).json()["items"]
    assert [e["kind"] for e in history] == ["added", "held", "expired"]


async def test_extending_moves_its_time_and_ttl_keeps_to_its_range(
    client: httpx.AsyncClient,
) -> None:
    sku, holdid = random_ref("sku"), random_ref("hold")
    await add_batch(client, random_ref("batch"), sku, 3)
    first = (await hold(client, holdid, {sku: 1}, ttl_s=2)).json()

    r = await client.post(f"/holds/{holdid}/extend", json={"ttl_s": 3600})

    assert r.status_code == 200, r.text
    assert r.json()["expires_at"] > first["expires_at"]
    await asyncio.sleep(2.5)
    assert (await client.get(f"/holds/{holdid}")).json()["state"] == "held"
    assert await available(client, sku) == 2
    for ttl in (0, 3601, "60", 1.5):
        bad = await hold(client, random_ref("hold"), {sku: 1}, ttl_s=ttl)  # type: ignore[arg-type]
        assert bad.status_code == 422, ttl
    assert await available(client, sku) == 2
    # Two lines of one sku are one line of their sum.
    twice = {"holdid": random_ref("hold"), "lines": [{"sku": sku, "qty": 1}] * 2}
    summed = await client.post("/holds", json=twice)
    assert summed.status_code == 201, summed.text
    assert [(ln["sku"], ln["qty"]) for ln in summed.json()["lines"]] == [(sku, 2)]
    assert await available(client, sku) == 0
    many = {"holdid": random_ref("hold"), "lines": [{"sku": sku, "qty": 10**9}] * 100}
    too_many = await client.post("/holds", json=many)
    assert (too_many.status_code, too_many.json()["short"]) == (409, [sku])


async def test_32_racing_holds_hold_exactly_what_there_is(client: httpx.AsyncClient) -> None:
    a, b = random_ref("sku-a"), random_ref("sku-b")
    await add_batch(client, random_ref("batch"), a, 20)
    await add_batch(client, random_ref("batch"), b, 10)
    await add_batch(client, random_ref("batch"), b, 5, "2031-01-01")

    answers = await asyncio.gather(
        *(hold(client, random_ref("hold"), {a: 1, b: 1}) for _ in range(32))
    )

    statuses = sorted(r.status_code for r in answers)
    assert statuses == [201] * 15 + [409] * 17, statuses
    assert all(r.json()["short"] == [b] for r in answers if r.status_code == 409)
    assert (await available(client, a), await available(client, b)) == (5, 0)


async def test_on_the_embedded_default_a_hold_is_kept_confirmed_and_expires(
    sqlite_url: str,
) -> None:
    async with serving(create_app(Settings(database_url=sqlite_url))) as client:
        sku, holdid = random_ref("sku"), random_ref("hold")
        await add_batch(client, random_ref("batch"), sku, 4)
        assert (await hold(client, holdid, {sku: 3})).status_code == 201
        short = await hold(client, random_ref("hold"), {sku: 2})
        assert (short.status_code, short.json()["short"]) == (409, [sku])
        confirmed = await client.post(f"/holds/{holdid}/confirm", json={"orderid": "o"})
        assert confirmed.status_code == 202, confirmed.text
        assert (await client.get("/orders/o")).json()["lines"][0]["state"] == "allocated"
        brief = await hold(client, random_ref("hold"), {sku: 1}, ttl_s=1)
        assert brief.status_code == 201
        assert await available(client, sku) == 0
        deadline = time.time() + 4
        while await available(client, sku) != 1:
            assert time.time() < deadline, "not expired on SQLite"
            await asyncio.sleep(0.05)


async def test_confirming_into_an_order_with_a_line_of_the_sku_is_a_409_that_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    sku, ref, orderid, holdid = (random_ref(n) for n in ("sku", "batch", "order", "hold"))
    await add_batch(client, ref, sku, 10)
    await allocate(client, orderid, sku, 2)
    await hold(client, holdid, {sku: 2})

    r = await client.post(f"/holds/{holdid}/confirm", json={"orderid": orderid})

    assert r.status_code == 409
    assert r.json()["type"] == problems.LINE_EXISTS.uri
    batch = (await client.get(f"/batches/{ref}")).json()
    assert (batch["allocated"], batch["held"], batch["available"]) == (2, 2, 6)
    assert (await client.get(f"/holds/{holdid}")).json()["state"] == "held"


async def test_a_batch_that_shrinks_while_its_holds_end_never_deadlocks(
    client: httpx.AsyncClient, postgres_url: str
) -> None:
    a, b = random_ref("sku-a"), random_ref("sku-b")
    await add_batch(client, (ref_a := random_ref("batch")), a, 100)
    await add_batch(client, (ref_b := random_ref("batch")), b, 100)
    holdids = [random_ref("hold") for _ in range(16)]
    for holdid in holdids:
        assert (await hold(client, holdid, {a: 5, b: 5})).status_code == 201
    before = await deadlocks(postgres_url)

    answers = await asyncio.gather(
        *(client.delete(f"/holds/{h}") for h in holdids[::2]),
        *(client.post(f"/holds/{h}/confirm", json={"orderid": h}) for h in holdids[1::2]),
        *(client.patch(f"/batches/{ref}", json={"qty": 30}) for ref in (ref_a, ref_b)),
    )

    assert {r.status_code for r in answers} <= {202, 204}, [r.text for r in answers]
    await asyncio.sleep(1.5)  # a backend's counts reach the statistics within a second
    assert await deadlocks(postgres_url) == before
    for sku in (a, b):
        assert 0 <= await available(client, sku) <= 30


async def deadlocks(database_url: str) -> int:
    rows = await query(
        database_url,
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
    )
    return int(rows[0][0])
