"""The book's own end-to-end scenarios, over HTTP, on SQLite and PostgreSQL."""

import httpx

from tests.conftest import random_ref


async def add_batch(
    client: httpx.AsyncClient, ref: str, sku: str, qty: int, eta: str | None
) -> None:
    r = await client.post("/add_batch", json={"ref": ref, "sku": sku, "qty": qty, "eta": eta})
    assert r.status_code == 201, r.text


async def test_happy_path_returns_202_and_batch_is_allocated(client: httpx.AsyncClient) -> None:
    orderid = random_ref("order")
    sku, othersku = random_ref("sku"), random_ref("sku-other")
    earlybatch, laterbatch, otherbatch = random_ref("b1"), random_ref("b2"), random_ref("b3")
    await add_batch(client, laterbatch, sku, 100, "2011-01-02")
    await add_batch(client, earlybatch, sku, 100, "2011-01-01")
    await add_batch(client, otherbatch, othersku, 100, None)

    r = await client.post("/allocate", json={"orderid": orderid, "sku": sku, "qty": 3})
    assert r.status_code == 202
    assert r.headers["location"] == f"/allocations/{orderid}"

    r = await client.get(r.headers["location"])
    assert r.status_code == 200
    assert r.json() == [{"sku": sku, "batchref": earlybatch}]


async def test_unhappy_path_returns_400_and_error_message(client: httpx.AsyncClient) -> None:
    unknown_sku, orderid = random_ref("sku"), random_ref("order")
    r = await client.post("/allocate", json={"orderid": orderid, "sku": unknown_sku, "qty": 20})
    assert r.status_code == 400
    assert r.json()["message"] == f"Invalid sku {unknown_sku}"

    r = await client.get(f"/allocations/{orderid}")
    assert r.status_code == 404
