"""The book's own scenarios, and the API beyond them, over HTTP on SQLite and PostgreSQL."""

import re
from urllib.parse import unquote

import httpx
import pytest

from tests.support import scenarios
from tests.support.refs import random_ref
from tests.support.scenarios import add_batch, allocate, allocations, batch


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """The book's flow on the embedded default, SQLite, as a newcomer meets it, and on
    PostgreSQL."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


async def test_happy_path_returns_202_and_batch_is_allocated(client: httpx.AsyncClient) -> None:
    await scenarios.earliest_batch_is_allocated(client)


async def test_warehouse_stock_is_preferred_to_shipments(client: httpx.AsyncClient) -> None:
    await scenarios.warehouse_stock_is_preferred_to_shipments(client)


async def test_unhappy_path_returns_400_and_error_message(client: httpx.AsyncClient) -> None:
    await scenarios.unknown_sku_is_a_400_and_the_order_has_no_allocation(client)


async def test_an_order_for_two_skus_lists_both(client: httpx.AsyncClient) -> None:
    await scenarios.an_order_for_two_skus_lists_both(client)


@pytest.mark.parametrize("route", ["/batches", "/add_batch"])
async def test_new_batch_has_a_location_showing_its_quantities(
    client: httpx.AsyncClient, route: str
) -> None:
    ref, sku = random_ref("batch"), random_ref("sku")
    r = await client.post(route, json={"ref": ref, "sku": sku, "qty": 20, "eta": "2011-01-01"})
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/batches/{ref}"
    assert r.json() == {"ref": ref}

    r = await client.get(r.headers["location"])
    assert r.status_code == 200
    assert r.json() == {
        "reference": ref,
        "sku": sku,
        "eta": "2011-01-01",
        "purchased": 20,
        "allocated": 0,
        "held": 0,
        "available": 20,
    }

    await allocate(client, random_ref("order"), sku, 3)
    await allocate(client, random_ref("order"), sku, 5)

    after = await batch(client, ref)
    assert (after["purchased"], after["allocated"], after["available"]) == (20, 8, 12)


async def test_warehouse_batch_shows_no_eta(client: httpx.AsyncClient) -> None:
    ref = random_ref("batch")
    await add_batch(client, ref, random_ref("sku"), 7, None)
    assert (await batch(client, ref))["eta"] is None


async def test_lowering_a_batch_below_its_allocations_moves_the_order(
    client: httpx.AsyncClient,
) -> None:
    orderid, sku = random_ref("order"), random_ref("sku")
    warehouse, shipment = random_ref("warehouse"), random_ref("shipment")
    await add_batch(client, warehouse, sku, 10, None)
    await add_batch(client, shipment, sku, 10, "2011-01-01")
    await allocate(client, orderid, sku, 6)
    assert await allocations(client, orderid) == [{"sku": sku, "batchref": warehouse}]

    r = await client.patch(f"/batches/{warehouse}", json={"qty": 5})
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/batches/{warehouse}"

    assert await allocations(client, orderid) == [{"sku": sku, "batchref": shipment}]
    lowered, other = await batch(client, warehouse), await batch(client, shipment)
    assert (lowered["purchased"], lowered["allocated"], lowered["available"]) == (5, 0, 5)
    assert (other["purchased"], other["allocated"], other["available"]) == (10, 6, 4)


async def test_lowering_a_batch_with_no_stock_elsewhere_unallocates_the_order(
    client: httpx.AsyncClient,
) -> None:
    orderid, sku, ref = random_ref("order"), random_ref("sku"), random_ref("batch")
    await add_batch(client, ref, sku, 10, None)
    await allocate(client, orderid, sku, 6)

    r = await client.patch(f"/batches/{ref}", json={"qty": 5})
    assert r.status_code == 202, r.text

    r = await client.get(f"/allocations/{orderid}")
    assert r.status_code == 404
    lowered = await batch(client, ref)
    assert (lowered["purchased"], lowered["allocated"], lowered["available"]) == (5, 0, 5)


async def test_a_batch_lowered_to_zero_holds_nothing(client: httpx.AsyncClient) -> None:
    sku, ref = random_ref("sku"), random_ref("batch")
    orders = [random_ref("order"), random_ref("order")]
    await add_batch(client, ref, sku, 10, None)
    for orderid in orders:
        await allocate(client, orderid, sku, 2)

    r = await client.patch(f"/batches/{ref}", json={"qty": 0})
    assert r.status_code == 202, r.text

    for orderid in orders:
        assert (await client.get(f"/allocations/{orderid}")).status_code == 404
    emptied = await batch(client, ref)
    assert (emptied["purchased"], emptied["allocated"], emptied["available"]) == (0, 0, 0)


async def test_raising_a_batch_makes_room_for_an_order_that_did_not_fit(
    client: httpx.AsyncClient,
) -> None:
    sku, ref = random_ref("sku"), random_ref("batch")
    first, second = random_ref("order"), random_ref("order")
    await add_batch(client, ref, sku, 5, None)
    await allocate(client, first, sku, 5)
    await allocate(client, second, sku, 3)
    assert (await client.get(f"/allocations/{second}")).status_code == 404

    r = await client.patch(f"/batches/{ref}", json={"qty": 8})
    assert r.status_code == 202, r.text
    await allocate(client, second, sku, 3)

    assert await allocations(client, first) == [{"sku": sku, "batchref": ref}]
    assert await allocations(client, second) == [{"sku": sku, "batchref": ref}]
    raised = await batch(client, ref)
    assert (raised["purchased"], raised["allocated"], raised["available"]) == (8, 8, 0)


async def test_repeating_an_allocation_changes_nothing(client: httpx.AsyncClient) -> None:
    orderid, sku, ref = random_ref("order"), random_ref("sku"), random_ref("batch")
    await add_batch(client, ref, sku, 10, None)

    for _ in range(3):
        r = await client.post("/allocate", json={"orderid": orderid, "sku": sku, "qty": 3})
        assert r.status_code == 202, r.text
        assert r.headers["location"] == f"/orders/{orderid}"

    assert await allocations(client, orderid) == [{"sku": sku, "batchref": ref}]
    after = await batch(client, ref)
    assert (after["allocated"], after["available"]) == (3, 7)


async def test_the_same_order_asking_for_a_different_quantity_is_a_409(
    client: httpx.AsyncClient,
) -> None:
    orderid, sku, ref = random_ref("order"), random_ref("sku"), random_ref("batch")
    await add_batch(client, ref, sku, 10, None)
    await allocate(client, orderid, sku, 3)

    r = await client.post("/allocate", json={"orderid": orderid, "sku": sku, "qty": 4})
    assert r.status_code == 409
    assert r.json()["message"]

    assert await allocations(client, orderid) == [{"sku": sku, "batchref": ref}]
    assert (await batch(client, ref))["allocated"] == 3


@pytest.mark.parametrize(
    "change",
    [{"qty": 11}, {"eta": "2011-01-01"}, {"sku": "another-sku"}],
    ids=["qty", "eta", "sku"],
)
async def test_a_batch_repeated_with_different_details_is_a_409(
    client: httpx.AsyncClient, change: dict[str, object]
) -> None:
    ref, sku = random_ref("batch"), random_ref("sku")
    original = {"ref": ref, "sku": sku, "qty": 10, "eta": None}
    assert (await client.post("/batches", json=original)).status_code == 201

    r = await client.post("/batches", json={**original, **change})
    assert r.status_code == 409, r.text
    assert r.json()["message"]

    unchanged = await batch(client, ref)
    assert (unchanged["sku"], unchanged["purchased"], unchanged["eta"]) == (sku, 10, None)


async def test_an_identical_batch_repeated_is_a_201_and_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    ref, sku = random_ref("batch"), random_ref("sku")
    body = {"ref": ref, "sku": sku, "qty": 10, "eta": "2011-01-01"}
    assert (await client.post("/batches", json=body)).status_code == 201
    await allocate(client, random_ref("order"), sku, 4)

    r = await client.post("/batches", json=body)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/batches/{ref}"

    after = await batch(client, ref)
    assert (after["purchased"], after["allocated"], after["available"]) == (10, 4, 6)


async def test_changing_an_unknown_batch_is_a_404(client: httpx.AsyncClient) -> None:
    ref = random_ref("batch")
    r = await client.patch(f"/batches/{ref}", json={"qty": 5})
    assert r.status_code == 404
    assert ref in r.json()["message"]

    assert (await client.get(f"/batches/{ref}")).status_code == 404


async def test_an_unknown_batch_is_a_404(client: httpx.AsyncClient) -> None:
    r = await client.get(f"/batches/{random_ref('batch')}")
    assert r.status_code == 404
    assert r.json()["message"]


# A URI path, as RFC 3986 spells it: anything else must be percent-encoded.
URI_PATH = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*")


def assert_names(location: str, path: str) -> None:
    assert URI_PATH.fullmatch(location), f"not a valid URI path: {location!r}"
    assert unquote(location) == path


@pytest.mark.parametrize(
    "name",
    ["with space", "what?", "hash#tag", "100%", "a%2Fb", "café", "日本-42", "emoji-📦"],
    ids=["space", "question-mark", "hash", "percent", "encoded-slash", "latin-1", "cjk", "emoji"],
)
async def test_the_location_of_any_valid_reference_leads_back_to_it(
    client: httpx.AsyncClient, name: str
) -> None:
    ref, orderid, sku = f"{name}-{random_ref('b')}", f"{name}-{random_ref('o')}", random_ref("sku")

    r = await client.post("/batches", json={"ref": ref, "sku": sku, "qty": 5, "eta": None})
    assert r.status_code == 201, r.text
    assert_names(r.headers["location"], f"/batches/{ref}")
    r = await client.get(r.headers["location"])
    assert r.status_code == 200, r.text
    assert r.json()["reference"] == ref

    r = await client.post("/allocate", json={"orderid": orderid, "sku": sku, "qty": 1})
    assert r.status_code == 202, r.text
    assert_names(r.headers["location"], f"/orders/{orderid}")
    r = await client.get(r.headers["location"])
    assert r.status_code == 200, r.text
    assert r.json()["lines"] == [{"sku": sku, "state": "allocated", "batchref": ref}]
