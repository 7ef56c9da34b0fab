"""The book's end-to-end scenarios, run against any client: in-process or a real server."""

from typing import Any

import httpx

from tests.support.refs import random_ref


async def add_batch(
    client: httpx.AsyncClient, ref: str, sku: str, qty: int, eta: str | None = None
) -> None:
    r = await client.post("/add_batch", json={"ref": ref, "sku": sku, "qty": qty, "eta": eta})
    assert r.status_code == 201, r.text


async def allocate(client: httpx.AsyncClient, orderid: str, sku: str, qty: int) -> None:
    r = await client.post("/allocate", json={"orderid": orderid, "sku": sku, "qty": qty})
    assert r.status_code == 202, r.text


async def allocations(client: httpx.AsyncClient, orderid: str) -> list[dict[str, str]]:
    """The order's allocations, sorted by sku; the order must have some."""
    r = await client.get(f"/allocations/{orderid}")
    assert r.status_code == 200, r.text
    lines: list[dict[str, str]] = r.json()
    return sorted(lines, key=lambda line: line["sku"])


async def batch(client: httpx.AsyncClient, ref: str) -> dict[str, Any]:
    r = await client.get(f"/batches/{ref}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def earliest_batch_is_allocated(client: httpx.AsyncClient) -> None:
    orderid = random_ref("order")
    sku, othersku = random_ref("sku"), random_ref("sku-other")
    earlybatch, laterbatch, otherbatch = random_ref("b1"), random_ref("b2"), random_ref("b3")
    await add_batch(client, laterbatch, sku, 100, "2011-01-02")
    await add_batch(client, earlybatch, sku, 100, "2011-01-01")
    await add_batch(client, otherbatch, othersku, 100, None)

    r = await client.post("/allocate", json={"orderid": orderid, "sku": sku, "qty": 3})
    assert r.status_code == 202

    r = await client.get(f"/allocations/{orderid}")
    assert r.status_code == 200
    assert r.json() == [{"sku": sku, "batchref": earlybatch}]


async def warehouse_stock_is_preferred_to_shipments(client: httpx.AsyncClient) -> None:
    orderid, sku = random_ref("order"), random_ref("sku")
    shipment, warehouse = random_ref("shipment"), random_ref("warehouse")
    await add_batch(client, shipment, sku, 100, "2011-01-01")
    await add_batch(client, warehouse, sku, 100, None)

    await allocate(client, orderid, sku, 10)

    assert await allocations(client, orderid) == [{"sku": sku, "batchref": warehouse}]
    assert (await batch(client, shipment))["allocated"] == 0


async def unknown_sku_is_a_400_and_the_order_has_no_allocation(
    client: httpx.AsyncClient,
) -> None:
    unknown_sku, orderid = random_ref("sku"), random_ref("order")
    r = await client.post("/allocate", json={"orderid": orderid, "sku": unknown_sku, "qty": 20})
    assert r.status_code == 400
    assert r.json()["message"] == f"Invalid sku {unknown_sku}"

    r = await client.get(f"/allocations/{orderid}")
    assert r.status_code == 404
    assert r.json()["message"]


async def an_order_for_two_skus_lists_both(client: httpx.AsyncClient) -> None:
    orderid = random_ref("order")
    chair, table = random_ref("chair"), random_ref("table")
    chairs, tables = random_ref("chairs"), random_ref("tables")
    await add_batch(client, chairs, chair, 10, None)
    await add_batch(client, tables, table, 10, "2011-01-01")

    await allocate(client, orderid, chair, 4)
    await allocate(client, orderid, table, 1)

    assert await allocations(client, orderid) == sorted(
        [{"sku": chair, "batchref": chairs}, {"sku": table, "batchref": tables}],
        key=lambda line: line["sku"],
    )
