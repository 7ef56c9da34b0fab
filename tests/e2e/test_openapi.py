"""What Swagger UI shows: every route, its real statuses, and bodies with working examples."""

from typing import Any

import httpx
import pytest

# The schema does not depend on the database; one is enough.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

# Every route reaches the database, so every one may answer 503; every write
# may meet the API token (401) and the body size limit (413).
ROUTES = [
    ("/add_batch", "post", {"201", "401", "409", "413", "422", "503"}),
    ("/batches", "post", {"201", "401", "409", "413", "422", "503"}),
    ("/batches/{ref}", "get", {"200", "404", "422", "503"}),
    ("/batches/{ref}", "patch", {"202", "401", "404", "409", "413", "422", "503"}),
    ("/allocate", "post", {"202", "400", "401", "409", "413", "422", "503"}),
    ("/allocations/{orderid}", "get", {"200", "404", "422", "503"}),
    ("/allocations/{orderid}/{sku}", "get", {"200", "404", "422", "503"}),
    ("/products/{sku}", "get", {"200", "404", "422", "503"}),
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


def try_it_out_examples(openapi: dict[str, Any], path: str, method: str) -> list[Any]:
    body = openapi["paths"][path][method]["requestBody"]
    return list(body["content"]["application/json"]["examples"].values())


def path_example(openapi: dict[str, Any], path: str, name: str) -> str:
    [parameter] = [p for p in openapi["paths"][path]["get"]["parameters"] if p["name"] == name]
    [example, *_] = parameter["examples"].values()
    value: str = example["value"]
    return value


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
    for status in sorted(s for s in statuses if s[0] in "45"):
        schema = responses[status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Error"}, status
        error = resolve(openapi, schema)
        assert "message" in error["required"], status
        assert error["properties"]["message"]["type"] == "string"


@pytest.mark.parametrize(("path", "method", "statuses"), ROUTES)
async def test_every_error_says_when_it_happens(
    openapi: dict[str, Any], path: str, method: str, statuses: set[str]
) -> None:
    responses = openapi["paths"][path][method]["responses"]
    described = {s: responses[s]["description"] for s in statuses if s[0] in "45"}
    assert all(d and d != "Additional Response" for d in described.values()), described
    assert "detail" in described["422"]
    assert "Retry-After" in described["503"]
    assert set(responses["503"]["headers"]) == {"Retry-After"}


@pytest.mark.parametrize(("path", "method", "statuses"), ROUTES)
async def test_every_route_has_a_tag_a_summary_and_a_description(
    openapi: dict[str, Any], path: str, method: str, statuses: set[str]
) -> None:
    operation = openapi["paths"][path][method]
    described = {tag["name"] for tag in openapi["tags"] if tag.get("description")}
    assert operation["tags"]
    assert set(operation["tags"]) <= described
    assert operation["summary"]
    assert operation["description"]


@pytest.mark.parametrize(
    ("path", "method", "statuses"), [r for r in ROUTES if r[1] in {"post", "patch"}]
)
async def test_a_write_documents_its_location(
    openapi: dict[str, Any], path: str, method: str, statuses: set[str]
) -> None:
    [status] = [s for s in statuses if s.startswith("2")]
    success = openapi["paths"][path][method]["responses"][status]
    location = success["headers"]["Location"]
    assert location["schema"] == {"type": "string"}
    assert location["description"]
    assert "Location" in success["description"]


IDEMPOTENT = [("/add_batch", "post"), ("/batches", "post"), ("/allocate", "post")]


@pytest.mark.parametrize(("path", "method"), IDEMPOTENT)
async def test_a_post_write_documents_its_idempotency_key(
    openapi: dict[str, Any], path: str, method: str
) -> None:
    operation = openapi["paths"][path][method]
    [parameter] = [p for p in operation["parameters"] if p["name"] == "Idempotency-Key"]
    assert (parameter["in"], parameter["required"]) == ("header", False)
    assert "422" in parameter["description"]
    assert "409" in parameter["description"]
    assert parameter["schema"]["maxLength"] == 255
    responses = operation["responses"]
    assert "Idempotency-Key" in responses["422"]["description"]
    assert "in progress" in responses["409"]["description"]
    assert set(responses["409"]["headers"]) == {"Retry-After"}
    [success] = [s for s in responses if s.startswith("2")]
    assert set(responses[success]["headers"]) == {"Location", "Idempotent-Replayed"}


@pytest.mark.parametrize(
    ("path", "method"),
    [(path, method) for path, method, _ in ROUTES if (path, method) not in IDEMPOTENT],
)
async def test_other_routes_take_no_idempotency_key(
    openapi: dict[str, Any], path: str, method: str
) -> None:
    parameters = openapi["paths"][path][method].get("parameters", [])
    assert "Idempotency-Key" not in {p["name"] for p in parameters}


@pytest.mark.parametrize(("path", "method"), WRITES)
async def test_a_request_body_has_a_schema_with_a_complete_example(
    openapi: dict[str, Any], path: str, method: str
) -> None:
    schema = body_schema(openapi, path, method)
    assert schema["additionalProperties"] is False
    [example, *_] = schema["examples"]
    assert set(schema["required"]) <= set(example) <= set(schema["properties"])


@pytest.mark.parametrize(("path", "method"), WRITES)
async def test_try_it_out_fills_in_the_schemas_example(
    openapi: dict[str, Any], path: str, method: str
) -> None:
    # Swagger UI fills the body with the first of these, not the schema's own.
    examples = [e["value"] for e in try_it_out_examples(openapi, path, method)]
    assert examples == body_schema(openapi, path, method)["examples"]


async def test_the_documented_examples_work_when_tried(
    client: httpx.AsyncClient, openapi: dict[str, Any]
) -> None:
    [batch, *_] = try_it_out_examples(openapi, "/batches", "post")
    [line, *_] = try_it_out_examples(openapi, "/allocate", "post")
    [change, *_] = try_it_out_examples(openapi, "/batches/{ref}", "patch")
    orderid = path_example(openapi, "/allocations/{orderid}", "orderid")
    ref = path_example(openapi, "/batches/{ref}", "ref")

    r = await client.post("/batches", json=batch["value"])
    assert r.status_code == 201
    assert r.headers["location"] == f"/batches/{ref}"
    r = await client.post("/allocate", json=line["value"])
    assert r.status_code == 202
    assert r.headers["location"] == f"/allocations/{orderid}"
    r = await client.get(f"/allocations/{orderid}")
    assert r.json() == [{"sku": line["value"]["sku"], "batchref": ref}]
    assert (await client.patch(f"/batches/{ref}", json=change["value"])).status_code == 202


@pytest.mark.parametrize(
    ("path", "name"), [("/batches/{ref}", "ref"), ("/allocations/{orderid}", "orderid")]
)
async def test_path_identifiers_are_documented(
    openapi: dict[str, Any], path: str, name: str
) -> None:
    for operation in openapi["paths"][path].values():
        [parameter] = [p for p in operation["parameters"] if p["in"] == "path"]
        assert (parameter["name"], parameter["required"]) == (name, True)
        assert parameter["schema"]["maxLength"] == 255


async def test_the_service_describes_itself(openapi: dict[str, Any]) -> None:
    assert openapi["info"]["title"] == "Allocation service"
    description = openapi["info"]["description"]
    for subject in ["202 Accepted", "`Location`", "read model", '{"message": "..."}', "detail"]:
        assert subject in description


async def test_swagger_ui_is_served(client: httpx.AsyncClient) -> None:
    r = await client.get("/docs")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "swagger" in r.text.lower()
    assert "/openapi.json" in r.text


@pytest.mark.parametrize(
    ("path", "method", "status", "targets"),
    [
        ("/batches", "post", "201", {"/batches/{ref}", "/products/{sku}", "/allocate"}),
        ("/add_batch", "post", "201", {"/batches/{ref}", "/products/{sku}", "/allocate"}),
        ("/batches/{ref}", "patch", "202", {"/batches/{ref}"}),
        (
            "/allocate",
            "post",
            "202",
            {"/allocations/{orderid}", "/allocations/{orderid}/{sku}", "/products/{sku}"},
        ),
    ],
)
async def test_a_write_links_to_the_calls_that_can_follow_it(
    openapi: dict[str, Any], path: str, method: str, status: str, targets: set[str]
) -> None:
    linked: set[str] = set()
    for link in openapi["paths"][path][method]["responses"][status]["links"].values():
        assert link["description"]
        target_path, target_method = link["operationRef"].removeprefix("#/paths/").split("/")
        target_path = target_path.replace("~1", "/").replace("~0", "~")
        target = openapi["paths"][target_path][target_method]
        names = {p["name"] for p in target.get("parameters", []) if p["in"] == "path"}
        assert set(link.get("parameters", {})) == names, link
        linked.add(target_path)
    assert linked == targets
