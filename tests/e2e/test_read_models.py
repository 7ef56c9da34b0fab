"""The read models beyond the book's: a product's stock, and one line of an order."""

import httpx

from tests.support.refs import random_ref
from tests.support.scenarios import add_batch, allocate


async def test_a_product_shows_its_stock_now_and_per_batch(client: httpx.AsyncClient) -> None:
    sku = random_ref("sku")
    warehouse, early, late = random_ref("wh"), random_ref("early"), random_ref("late")
    await add_batch(client, late, sku, 30, "2031-06-01")
    await add_batch(client, warehouse, sku, 10, None)
    await add_batch(client, early, sku, 20, "2031-01-01")
    await allocate(client, random_ref("order"), sku, 4)

    r = await client.get(f"/products/{sku}")

    assert r.status_code == 200
    assert r.json() == {
        "sku": sku,
        "available_now": 6,
        "incoming": 50,
        "batches": [
            {"reference": warehouse, "eta": None, "available": 6},
            {"reference": early, "eta": "2031-01-01", "available": 20},
            {"reference": late, "eta": "2031-06-01", "available": 30},
        ],
    }


async def test_a_product_follows_quantity_changes(client: httpx.AsyncClient) -> None:
    sku, ref = random_ref("sku"), random_ref("batch")
    await add_batch(client, ref, sku, 10, None)

    r = await client.patch(f"/batches/{ref}", json={"qty": 3})
    assert r.status_code == 202

    product = (await client.get(f"/products/{sku}")).json()
    assert product["available_now"] == 3
    assert product["batches"] == [{"reference": ref, "eta": None, "available": 3}]


async def test_an_unknown_product_is_a_404_with_a_message(client: httpx.AsyncClient) -> None:
    sku = random_ref("sku")

    r = await client.get(f"/products/{sku}")

    assert r.status_code == 404
    assert sku in r.json()["message"]


async def test_one_line_of_an_order_can_be_read_alone(client: httpx.AsyncClient) -> None:
    orderid = random_ref("order")
    sku1, sku2 = random_ref("sku1"), random_ref("sku2")
    batch1, batch2 = random_ref("b1"), random_ref("b2")
    await add_batch(client, batch1, sku1, 10, None)
    await add_batch(client, batch2, sku2, 10, None)
    await allocate(client, orderid, sku1, 1)
    await allocate(client, orderid, sku2, 1)

    r = await client.get(f"/allocations/{orderid}/{sku2}")

    assert r.status_code == 200
    assert r.json() == {"sku": sku2, "batchref": batch2}


async def test_a_line_the_order_does_not_hold_is_a_404(client: httpx.AsyncClient) -> None:
    orderid, sku, other = random_ref("order"), random_ref("sku"), random_ref("other")
    await add_batch(client, random_ref("batch"), sku, 10, None)
    await allocate(client, orderid, sku, 1)

    assert (await client.get(f"/allocations/{orderid}/{other}")).status_code == 404
    assert (await client.get(f"/allocations/{random_ref('nobody')}/{sku}")).status_code == 404


async def test_a_deallocated_line_is_gone_from_its_order(client: httpx.AsyncClient) -> None:
    orderid, sku, ref = random_ref("order"), random_ref("sku"), random_ref("batch")
    await add_batch(client, ref, sku, 10, None)
    await allocate(client, orderid, sku, 8)

    await client.patch(f"/batches/{ref}", json={"qty": 5})

    assert (await client.get(f"/allocations/{orderid}/{sku}")).status_code == 404
    assert (await client.get(f"/allocations/{orderid}")).status_code == 404


async def test_an_out_of_stock_line_reads_as_such_not_as_an_unknown_order(
    client: httpx.AsyncClient,
) -> None:
    sku, ref, more = random_ref("sku"), random_ref("batch"), random_ref("batch")
    orderid = random_ref("order")
    await add_batch(client, ref, sku, 1)

    r = await client.post("/allocate", json={"orderid": orderid, "sku": sku, "qty": 5})

    assert r.status_code == 202
    assert r.headers["location"] == f"/orders/{orderid}"
    assert r.headers["link"] == f'</orders/{orderid}>; rel="order"'
    # The book's read: nothing allocated, a 404 as for an order never seen.
    assert (await client.get(f"/allocations/{orderid}")).status_code == 404
    # The write's Location answers, and says what became of the line.
    order = await client.get(r.headers["location"])
    assert order.status_code == 200
    assert order.json() == {
        "orderid": orderid,
        "lines": [{"sku": sku, "state": "out_of_stock", "batchref": None}],
    }
    unknown = await client.get(f"/orders/{random_ref('order')}")
    assert unknown.status_code == 404
    assert unknown.json()["message"].startswith("No order ")

    # Stock arrives; the refused line held nothing, and sent again it is allocated.
    await add_batch(client, more, sku, 10)
    await allocate(client, orderid, sku, 5)
    assert (await client.get(f"/orders/{orderid}")).json()["lines"] == [
        {"sku": sku, "state": "allocated", "batchref": more}
    ]
