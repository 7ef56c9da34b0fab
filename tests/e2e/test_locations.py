"""A write's ``Location`` always answers: 200, and what became of the write.

Against a real uvicorn (two workers, PostgreSQL), as a calling service
follows it: for every write, and for a line no batch has stock for.
"""

from __future__ import annotations

import httpx
import pytest

from tests.support.refs import random_ref

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


async def follow(http: httpx.AsyncClient, r: httpx.Response) -> httpx.Response:
    assert r.status_code in (201, 202), r.text
    answer = await http.get(r.headers["location"])
    assert answer.status_code == 200, (r.headers["location"], answer.text)
    return answer


@pytest.mark.parametrize("route", ["/batches", "/add_batch"])
async def test_a_new_batch_is_at_its_location(http: httpx.AsyncClient, route: str) -> None:
    ref = random_ref("batch")
    r = await http.post(route, json={"ref": ref, "sku": random_ref("sku"), "qty": 7})

    assert (await follow(http, r)).json()["available"] == 7


async def test_a_changed_batch_is_at_its_location(http: httpx.AsyncClient) -> None:
    ref = random_ref("batch")
    await http.post("/batches", json={"ref": ref, "sku": random_ref("sku"), "qty": 7})

    r = await http.patch(f"/batches/{ref}", json={"qty": 3})

    assert (await follow(http, r)).json()["purchased"] == 3


async def test_an_allocated_line_and_one_out_of_stock_both_answer_at_their_location(
    http: httpx.AsyncClient,
) -> None:
    sku, ref, orderid = random_ref("sku"), random_ref("batch"), random_ref("order")
    await http.post("/batches", json={"ref": ref, "sku": sku, "qty": 5})

    fits = await http.post("/allocate", json={"orderid": orderid, "sku": sku, "qty": 4})
    assert fits.headers["location"] == f"/orders/{orderid}"
    assert (await follow(http, fits)).json() == {
        "orderid": orderid,
        "lines": [{"sku": sku, "state": "allocated", "batchref": ref}],
    }

    other = random_ref("order")
    short = await http.post("/allocate", json={"orderid": other, "sku": sku, "qty": 4})
    # Accepted, and no batch could take it: its Location says so, not a 404.
    assert (await follow(http, short)).json() == {
        "orderid": other,
        "lines": [{"sku": sku, "state": "out_of_stock", "batchref": None}],
    }
    # The book's read keeps its contract: an order with nothing allocated is a 404.
    assert (await http.get(f"/allocations/{other}")).status_code == 404


async def test_a_replayed_write_gives_the_same_location(http: httpx.AsyncClient) -> None:
    sku, orderid = random_ref("sku"), random_ref("order")
    await http.post("/batches", json={"ref": random_ref("batch"), "sku": sku, "qty": 5})
    line, key = {"orderid": orderid, "sku": sku, "qty": 1}, {"Idempotency-Key": random_ref("k")}

    first = await http.post("/allocate", json=line, headers=key)
    again = await http.post("/allocate", json=line, headers=key)

    assert again.headers["location"] == first.headers["location"]
    assert (await follow(http, again)).json()["lines"][0]["state"] == "allocated"
