"""What Swagger UI shows: every route, its real statuses, and bodies with working examples."""

from typing import Any

import httpx
import pytest

# The schema does not depend on the database; one is enough.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

ROUTES = [
    ("/add_batch", "post", {"201", "409", "422"}),
    ("/batches", "post", {"201", "409", "422"}),
    ("/batches/{ref}", "get", {"200", "404", "422"}),
    ("/batches/{ref}", "patch", {"202", "404", "409", "422"}),
    ("/allocate", "post", {"202", "400", "409", "422"}),
    ("/allocations/{orderid}", "get", {"200", "404", "422"}),
    ("/allocations/{orderid}/{sku}", "get", {"200", "404", "422"}),
    ("/products/{sku}", "get", {"200", "404", "422"}),
]
WRITES = [(path, method) for path, method, _ in ROUTES if method in {"post", "patch"}]


@pytest.fixture
async def openapi(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    schema: dict[str, Any] = r.json()
    return schema


def resolve(openapi: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    name = schema["$ref"].removeprefix("#/components/schemas/")
    component: dict[str, Any] = openapi["components"]["schemas"][name]
    return component


def body_schema(openapi: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    body = openapi["paths"][path][method]["requestBody"]
    assert body["required"] is True
    return resolve(openapi, body["content"]["application/json"]["schema"])


async def test_every_route_is_listed(openapi: dict[str, Any]) -> None:
    listed = {(path, method) for path, item in openapi["paths"].items() for method in item}
    assert {(path, method) for path, method, _ in ROUTES} <= listed


@pytest.mark.parametrize(("path", "method", "statuses"), ROUTES)
async def test_a_route_documents_the_statuses_it_answers_with(
    openapi: dict[str, Any], path: str, method: str, statuses: set[str]
) -> None:
    operation = openapi["paths"][path][method]
    assert set(operation["responses"]) == statuses
    assert operation["summary"]


@pytest.mark.parametrize(("path", "method", "statuses"), ROUTES)
async def test_every_error_is_documented_as_a_message(
    openapi: dict[str, Any], path: str, method: str, statuses: set[str]
) -> None:
    responses = openapi["paths"][path][method]["responses"]
    for status in sorted(s for s in statuses if s.startswith("4")):
        error = resolve(openapi, responses[status]["content"]["application/json"]["schema"])
        assert "message" in error["required"], status
        assert error["properties"]["message"]["type"] == "string"


@pytest.mark.parametrize(("path", "method"), WRITES)
async def test_a_request_body_has_a_schema_with_a_complete_example(
    openapi: dict[str, Any], path: str, method: str
) -> None:
    schema = body_schema(openapi, path, method)
    assert schema["additionalProperties"] is False
    [example, *_] = schema["examples"]
    assert set(schema["required"]) <= set(example) <= set(schema["properties"])


async def test_the_documented_examples_work_when_tried(
    client: httpx.AsyncClient, openapi: dict[str, Any]
) -> None:
    [batch, *_] = body_schema(openapi, "/batches", "post")["examples"]
    [line, *_] = body_schema(openapi, "/allocate", "post")["examples"]
    [change, *_] = body_schema(openapi, "/batches/{ref}", "patch")["examples"]

    assert (await client.post("/batches", json=batch)).status_code == 201
    assert (await client.post("/allocate", json=line)).status_code == 202
    r = await client.get(f"/allocations/{line['orderid']}")
    assert r.json() == [{"sku": line["sku"], "batchref": batch["ref"]}]
    assert (await client.patch(f"/batches/{batch['ref']}", json=change)).status_code == 202


@pytest.mark.parametrize(
    ("path", "name"), [("/batches/{ref}", "ref"), ("/allocations/{orderid}", "orderid")]
)
async def test_path_identifiers_are_documented(
    openapi: dict[str, Any], path: str, name: str
) -> None:
    for operation in openapi["paths"][path].values():
        [parameter] = operation["parameters"]
        assert (parameter["name"], parameter["in"], parameter["required"]) == (name, "path", True)
        assert parameter["schema"]["maxLength"] == 255


async def test_the_service_describes_itself(openapi: dict[str, Any]) -> None:
    assert openapi["info"]["title"] == "Allocation service"
    assert openapi["info"]["description"]


async def test_swagger_ui_is_served(client: httpx.AsyncClient) -> None:
    r = await client.get("/docs")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "swagger" in r.text.lower()
    assert "/openapi.json" in r.text
