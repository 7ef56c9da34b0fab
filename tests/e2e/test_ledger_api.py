"""Cancel a line, change a batch at a version, read histories and lists: over HTTP.

The app in-process on PostgreSQL (the ``client`` fixture), as a caller sees it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from app.entrypoints.http import problems
from tests.support.refs import random_ref
from tests.support.scenarios import add_batch, allocate


async def batch_of(client: httpx.AsyncClient, ref: str) -> tuple[dict[str, Any], str]:
    r = await client.get(f"/batches/{ref}")
    assert r.status_code == 200, r.text
    return r.json(), r.headers["etag"]


async def test_cancelling_a_line_gives_back_its_units_and_the_order_reads_it_cancelled(
    client: httpx.AsyncClient,
) -> None:
    sku, ref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    await add_batch(client, ref, sku, 10)
    await allocate(client, orderid, sku, 3)

    r = await client.post("/deallocate", json={"orderid": orderid, "sku": sku})

    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/orders/{orderid}"
    order = (await client.get(r.headers["location"])).json()
    assert order["lines"] == [{"sku": sku, "state": "cancelled", "batchref": None}]
    assert (await client.get(f"/allocations/{orderid}")).status_code == 404
    assert (await batch_of(client, ref))[0]["available"] == 10
    again = await client.post("/deallocate", json={"orderid": orderid, "sku": sku})
    assert again.status_code == 202
    assert (await batch_of(client, ref))[0]["available"] == 10
    # Placed again, as a new line, of another quantity.
    await allocate(client, orderid, sku, 4)
    order = (await client.get(f"/orders/{orderid}")).json()
    assert order["lines"] == [{"sku": sku, "state": "allocated", "batchref": ref}]
    assert (await batch_of(client, ref))[0]["available"] == 6


async def test_a_line_never_accepted_is_a_404_of_its_own(client: httpx.AsyncClient) -> None:
    sku = random_ref("sku")
    await add_batch(client, random_ref("batch"), sku, 1)

    r = await client.post("/deallocate", json={"orderid": random_ref("order"), "sku": sku})

    assert r.status_code == 404
    assert r.json()["type"] == problems.UNKNOWN_LINE.uri


async def test_a_batch_answers_its_version_as_its_etag_and_if_match_guards_a_change(
    client: httpx.AsyncClient,
) -> None:
    sku, ref = random_ref("sku"), random_ref("batch")
    await add_batch(client, ref, sku, 10)
    _, etag = await batch_of(client, ref)
    await allocate(client, random_ref("order"), sku, 1)  # the batch's allocations change
    _, moved = await batch_of(client, ref)
    assert moved != etag == f'"{int(etag.strip(chr(34)))}"'

    stale = await client.patch(f"/batches/{ref}", json={"qty": 5}, headers={"If-Match": etag})
    assert stale.status_code == 412
    assert stale.json()["type"] == problems.VERSION_MISMATCH.uri
    assert (await batch_of(client, ref))[0]["purchased"] == 10

    fresh = await client.patch(f"/batches/{ref}", json={"qty": 5}, headers={"If-Match": moved})
    assert fresh.status_code == 202, fresh.text
    assert (await batch_of(client, ref))[0]["purchased"] == 5
    # Without If-Match it changes whatever the version.
    assert (await client.patch(f"/batches/{ref}", json={"qty": 6})).status_code == 202


async def test_a_retried_change_gets_its_first_answer_and_a_change_to_what_is_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    sku, ref, other = random_ref("sku"), random_ref("batch"), random_ref("batch")
    await add_batch(client, ref, sku, 10)
    await add_batch(client, other, sku, 10)
    _, etag = await batch_of(client, ref)
    headers = {"If-Match": etag, "Idempotency-Key": random_ref("key")}

    first = await client.patch(f"/batches/{ref}", json={"qty": 7}, headers=headers)
    retry = await client.patch(f"/batches/{ref}", json={"qty": 7}, headers=headers)
    # The same key and body on another batch is another request.
    elsewhere = await client.patch(f"/batches/{other}", json={"qty": 7}, headers=headers)

    assert (first.status_code, retry.status_code) == (202, 202)
    assert retry.headers["idempotent-replayed"] == "true"
    assert elsewhere.status_code == 422
    _, now = await batch_of(client, ref)
    assert (await client.patch(f"/batches/{ref}", json={"qty": 7})).status_code == 202
    assert (await batch_of(client, ref))[1] == now
    kinds = [e["kind"] for e in (await client.get(f"/products/{sku}/history")).json()["items"]]
    assert kinds == ["added", "added", "changed"]


async def test_a_key_sent_again_at_another_version_is_another_request(
    client: httpx.AsyncClient,
) -> None:
    sku, ref = random_ref("sku"), random_ref("batch")
    await add_batch(client, ref, sku, 10)
    _, etag = await batch_of(client, ref)
    key = random_ref("key")
    version = int(etag.strip('"'))

    # A tag is its text: "01" is not version 1, nor "0<version>" this one.
    padded = await client.patch(
        f"/batches/{ref}", json={"qty": 3}, headers={"If-Match": f'"0{version}"'}
    )
    stale = await client.patch(
        f"/batches/{ref}",
        json={"qty": 3},
        headers={"If-Match": f'"{version + 1}"', "Idempotency-Key": key},
    )
    fresh = await client.patch(
        f"/batches/{ref}", json={"qty": 3}, headers={"If-Match": etag, "Idempotency-Key": key}
    )

    assert (padded.status_code, stale.status_code) == (412, 412)
    assert fresh.status_code == 422, fresh.text  # not the 412 replayed
    assert fresh.json()["type"] == problems.KEY_REUSED.uri
    assert (await batch_of(client, ref))[0]["purchased"] == 10


async def test_a_day_out_of_range_is_refused_as_a_body_eta_is(
    client: httpx.AsyncClient,
) -> None:
    for day in ("1969-12-31", "2200-01-01"):
        r = await client.get(f"/batches?eta_before={day}")
        assert r.status_code == 422, r.text
    assert (await client.get("/batches?eta_before=2199-12-31")).status_code == 200


async def test_of_twenty_changes_at_one_version_exactly_one_wins(
    client: httpx.AsyncClient,
) -> None:
    sku, ref = random_ref("sku"), random_ref("batch")
    await add_batch(client, ref, sku, 10)
    _, etag = await batch_of(client, ref)

    answers = await asyncio.gather(
        *(
            client.patch(f"/batches/{ref}", json={"qty": 20 + n}, headers={"If-Match": etag})
            for n in range(20)
        )
    )

    statuses = sorted(r.status_code for r in answers)
    assert statuses == [202] + [412] * 19
    [won] = [n for n, r in enumerate(answers) if r.status_code == 202]
    assert (await batch_of(client, ref))[0]["purchased"] == 20 + won


async def test_a_new_eta_and_a_reason_change_the_batch_and_are_in_its_history(
    client: httpx.AsyncClient,
) -> None:
    sku, ref = random_ref("sku"), random_ref("batch")
    await add_batch(client, ref, sku, 10, eta="2031-06-30")
    r = await client.patch(
        f"/batches/{ref}",
        json={"qty": 8, "eta": None, "reason": "other", "note": "two fell off"},
        headers={"X-Request-ID": "req-resized"},
    )
    assert r.status_code == 202, r.text
    body, _ = await batch_of(client, ref)
    assert (body["purchased"], body["eta"]) == (8, None)
    product = (await client.get(f"/products/{sku}")).json()
    assert (product["available_now"], product["incoming"]) == (8, 0)

    history = (await client.get(f"/products/{sku}/history")).json()
    changed = [e for e in history["items"] if e["kind"] == "changed"]
    assert [(e["qty"], e["reason"], e["note"], e["request_id"]) for e in changed] == [
        (-2, "other", "two fell off", "req-resized")
    ]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"reason": "count"},
        {"qty": 1, "reason": "stolen"},
        {"qty": 1, "reason": "other"},
        {"qty": 1, "reason": "other", "note": "lost\u0000"},  # no text a database keeps
    ],
    ids=["nothing", "only-a-reason", "no-such-reason", "other-without-a-note", "nul-in-note"],
)
async def test_a_change_that_says_nothing_to_do_or_no_reason_is_refused(
    client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    ref = random_ref("batch")
    await add_batch(client, ref, random_ref("sku"), 10)

    r = await client.patch(f"/batches/{ref}", json=body)

    assert r.status_code == 422, r.text
    assert r.json()["type"] == problems.INVALID_INPUT.uri


async def test_an_orders_history_tells_each_change_with_the_request_that_made_it(
    client: httpx.AsyncClient,
) -> None:
    sku, ref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    await add_batch(client, ref, sku, 10)
    line = {"orderid": orderid, "sku": sku, "qty": 3}
    headers = {"X-Request-ID": "req-allocate", "Idempotency-Key": random_ref("key")}
    assert (await client.post("/allocate", json=line, headers=headers)).status_code == 202
    cancel = {"orderid": orderid, "sku": sku}
    r = await client.post("/deallocate", json=cancel, headers={"X-Request-ID": "req-cancel"})
    assert r.status_code == 202

    history = (await client.get(f"/orders/{orderid}/history")).json()

    assert history["next"] is None
    assert [
        (e["kind"], e["batchref"], e["qty"], e["request_id"], e["idempotency_key"])
        for e in history["items"]
    ] == [
        ("allocated", ref, -3, "req-allocate", headers["Idempotency-Key"]),
        ("cancelled", ref, 3, "req-cancel", None),
    ]
    assert all(e["sku"] == sku and e["at"] for e in history["items"])
    unknown = await client.get(f"/orders/{random_ref('order')}/history")
    assert unknown.status_code == 404


async def test_a_products_history_adds_up_to_what_it_has_available(
    client: httpx.AsyncClient,
) -> None:
    # Not ASCII, as a sku may be: a Link header is ASCII, its URL quoted.
    sku, a, b = random_ref("stół"), random_ref("batch"), random_ref("batch")
    await add_batch(client, a, sku, 10)
    await add_batch(client, b, sku, 5, eta="2031-01-01")
    for _ in range(4):
        await allocate(client, random_ref("order"), sku, 4)
    assert (await client.patch(f"/batches/{a}", json={"qty": 3})).status_code == 202

    entries, url = [], f"/products/{sku}/history?limit=2"
    while url:
        r = await client.get(url)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= 2
        if page["next"]:
            assert r.headers["link"] == f'<{page["next"]}>; rel="next"'
        entries += page["items"]
        url = page["next"]

    product = (await client.get(f"/products/{sku}")).json()
    assert sum(e["qty"] for e in entries) == product["available_now"] + product["incoming"]


async def test_paging_through_never_repeats_or_misses_a_batch_while_more_are_added(
    client: httpx.AsyncClient,
) -> None:
    sku = random_ref("sku")
    before = [f"{sku}-b{n:02}" for n in range(25)]
    for ref in before:
        await add_batch(client, ref, sku, 1)

    seen: list[str] = []
    url = f"/batches?sku={sku}&limit=7"
    while url:
        page = (await client.get(url)).json()
        seen += [item["reference"] for item in page["items"]]
        # Batches added meanwhile, before and after where the paging has got to.
        for ref in (f"{sku}-a{len(seen):02}", f"{sku}-c{len(seen):02}"):
            await add_batch(client, ref, sku, 1)
        url = page["next"]

    assert len(seen) == len(set(seen))
    assert set(before) <= set(seen)


async def test_lines_list_by_state_and_sku(client: httpx.AsyncClient) -> None:
    sku, ref = random_ref("sku"), random_ref("batch")
    await add_batch(client, ref, sku, 5)
    kept, short, cancelled = (random_ref("order") for _ in range(3))
    await allocate(client, kept, sku, 2)
    await allocate(client, cancelled, sku, 1)
    await allocate(client, short, sku, 9)
    await client.post("/deallocate", json={"orderid": cancelled, "sku": sku})

    async def listed(state: str) -> list[tuple[str, str]]:
        page = (await client.get(f"/orders?sku={sku}&state={state}")).json()
        return [(item["orderid"], item["state"]) for item in page["items"]]

    assert await listed("allocated") == [(kept, "allocated")]
    assert await listed("out_of_stock") == [(short, "out_of_stock")]
    assert await listed("cancelled") == [(cancelled, "cancelled")]
    # A cursor is the last key of the page before: past every line, the page is empty.
    past = (await client.get(f"/orders?sku={sku}&cursor=%7E")).json()
    assert past == {"items": [], "next": None}
