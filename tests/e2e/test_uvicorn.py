"""A real ``uvicorn app.main:app --workers 2`` on PostgreSQL, under concurrent clients."""

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support import scenarios
from tests.support.refs import random_ref
from tests.support.scenarios import add_batch, allocations, batch

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

CLIENTS = 40


@pytest.fixture
async def server(uvicorn_url: str) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=uvicorn_url, limits=limits, timeout=60) as client:
        yield client


async def test_happy_path_returns_202_and_batch_is_allocated(server: httpx.AsyncClient) -> None:
    await scenarios.earliest_batch_is_allocated(server)


async def test_warehouse_stock_is_preferred_to_shipments(server: httpx.AsyncClient) -> None:
    await scenarios.warehouse_stock_is_preferred_to_shipments(server)


async def test_unhappy_path_returns_400_and_error_message(server: httpx.AsyncClient) -> None:
    await scenarios.unknown_sku_is_a_400_and_the_order_has_no_allocation(server)


async def test_an_order_for_two_skus_lists_both(server: httpx.AsyncClient) -> None:
    await scenarios.an_order_for_two_skus_lists_both(server)


async def test_concurrent_orders_never_take_more_than_the_stock(
    server: httpx.AsyncClient,
) -> None:
    sku, ref = random_ref("sku"), random_ref("batch")
    orders = [random_ref(f"order{i}") for i in range(CLIENTS)]
    await add_batch(server, ref, sku, 25, None)

    answers = await asyncio.gather(
        *(server.post("/allocate", json={"orderid": o, "sku": sku, "qty": 1}) for o in orders)
    )

    assert [r.status_code for r in answers] == [202] * CLIENTS, [r.text for r in answers]
    reads = await asyncio.gather(*(server.get(f"/allocations/{o}") for o in orders))
    statuses = [r.status_code for r in reads]
    assert (statuses.count(200), statuses.count(404)) == (25, CLIENTS - 25)
    for r in reads:
        if r.status_code == 200:
            assert r.json() == [{"sku": sku, "batchref": ref}]
    sold_out = await batch(server, ref)
    assert (sold_out["purchased"], sold_out["allocated"], sold_out["available"]) == (25, 25, 0)


async def test_concurrent_first_batches_of_a_new_sku_are_all_usable(
    server: httpx.AsyncClient,
) -> None:
    sku = random_ref("sku")
    refs = [random_ref(f"batch{i}") for i in range(8)]

    answers = await asyncio.gather(
        *(
            server.post("/add_batch", json={"ref": ref, "sku": sku, "qty": 1, "eta": None})
            for ref in refs
        )
    )

    assert [r.status_code for r in answers] == [201] * len(refs), [r.text for r in answers]
    orders = [random_ref(f"order{i}") for i in range(len(refs))]
    for orderid in orders:
        r = await server.post("/allocate", json={"orderid": orderid, "sku": sku, "qty": 1})
        assert r.status_code == 202, r.text
    used = [(await allocations(server, orderid))[0]["batchref"] for orderid in orders]
    assert sorted(used) == sorted(refs)
    for ref in refs:
        full = await batch(server, ref)
        assert (full["sku"], full["allocated"], full["available"]) == (sku, 1, 0)


async def test_a_non_ascii_reference_is_created_without_a_server_error(
    server: httpx.AsyncClient,
) -> None:
    ref, sku = random_ref("日本"), random_ref("sku")

    r = await server.post("/batches", json={"ref": ref, "sku": sku, "qty": 5, "eta": None})

    assert r.status_code == 201, f"{r.status_code}: {r.text}"
    r = await server.get(r.headers["location"])
    assert r.status_code == 200
    assert r.json()["reference"] == ref
