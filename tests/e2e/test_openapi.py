"""What Swagger UI shows: every route, its real statuses, and bodies with working examples."""

import inspect
import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import jsonschema_rs
import pytest
from dependency_injector import providers
from fastapi import FastAPI
from starlette.requests import Request

from app.adapters.database_errors import ConcurrencyError, DatabaseUnavailable
from app.adapters.engines import build_engine
from app.config import Settings
from app.entrypoints import fields
from app.entrypoints.api import dependencies, problems, schemas
from app.entrypoints.api.idempotency import Idempotency, fingerprint
from app.main import create_app
from tests.support.apps import serving
from tests.support.servers import free_port


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    """The schema does not depend on the database; one is enough."""
    return sqlite_url


# Every route reaches the database, so every one may answer 503; every write
# may meet the API token (401, where one is set), the body size limit (413)
# and wants JSON (415).
ROUTES = [
    ("/add_batch", "post", {"201", "401", "409", "413", "415", "422", "503"}),
    ("/batches", "post", {"201", "401", "409", "413", "415", "422", "503"}),
    ("/batches/{ref}", "get", {"200", "404", "422", "503"}),
    ("/batches/{ref}", "patch", {"202", "401", "404", "409", "413", "415", "422", "503"}),
    ("/allocate", "post", {"202", "400", "401", "409", "413", "415", "422", "503"}),
    ("/allocations/{orderid}", "get", {"200", "404", "422", "503"}),
    ("/allocations/{orderid}/{sku}", "get", {"200", "404", "422", "503"}),
    ("/orders/{orderid}", "get", {"200", "404", "422", "503"}),
    ("/products/{sku}", "get", {"200", "404", "422", "503"}),
]
WRITES = [(path, method) for path, method, _ in ROUTES if method in {"post", "patch"}]


TOKEN = "documented-token"


@pytest.fixture
async def openapi(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    schema: dict[str, Any] = r.json()
    return schema


@pytest.fixture
async def guarded_openapi(sqlite_url: str) -> dict[str, Any]:
    """The document of a service with an API token set."""
    async with serving(create_app(Settings(database_url=sqlite_url, api_token=TOKEN))) as c:
        r = await c.get("/openapi.json")
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
    guarded_openapi: dict[str, Any], path: str, method: str, statuses: set[str]
) -> None:
    operation = guarded_openapi["paths"][path][method]
    assert set(operation["responses"]) == statuses
    assert operation["summary"]


@pytest.mark.parametrize(("path", "method", "statuses"), ROUTES)
async def test_without_a_token_set_no_route_documents_a_401_or_wants_a_token(
    openapi: dict[str, Any], path: str, method: str, statuses: set[str]
) -> None:
    operation = openapi["paths"][path][method]
    assert set(operation["responses"]) == statuses - {"401"}
    assert "security" not in operation
    assert "securitySchemes" not in openapi["components"]


async def test_with_a_token_set_writes_want_it_as_a_bearer_token(
    guarded_openapi: dict[str, Any],
) -> None:
    schemes = guarded_openapi["components"]["securitySchemes"]
    assert schemes == {
        "API token": {
            "type": "http",
            "scheme": "bearer",
            "description": schemes["API token"]["description"],
        }
    }
    for path, method, _ in ROUTES:
        operation = guarded_openapi["paths"][path][method]
        wanted: list[dict[str, list[str]]] | None = (
            [{"API token": []}] if (path, method) in WRITES else None
        )
        assert operation.get("security") == wanted, (path, method)


PROBLEM = {"$ref": "#/components/schemas/Problem"}


@pytest.mark.parametrize(("path", "method", "statuses"), ROUTES)
async def test_every_error_is_documented_as_a_problem(
    guarded_openapi: dict[str, Any], path: str, method: str, statuses: set[str]
) -> None:
    responses = guarded_openapi["paths"][path][method]["responses"]
    for status in sorted(s for s in statuses if s[0] in "45"):
        # One model for every error, under RFC 9457's media type and no other.
        assert set(responses[status]["content"]) == {"application/problem+json"}, status
        content = responses[status]["content"]["application/problem+json"]
        assert content["schema"] == PROBLEM, status
    problem = resolve(guarded_openapi, PROBLEM)
    assert problem["required"] == ["type", "title", "status", "detail", "message"]
    assert set(problem["properties"]) == {*problem["required"], "errors", "checks"}
    assert problem["properties"]["detail"]["type"] == "string"


async def test_the_errors_section_lists_every_type(openapi: dict[str, Any]) -> None:
    [description] = [tag["description"] for tag in openapi["tags"] if tag["name"] == "errors"]
    assert "errors" in resolve(openapi, PROBLEM)["description"]
    assert f"Each `type` is `{problems.TYPE_PREFIX}` and a name:" in description
    for kind in problems.TYPES.values():
        name = kind.uri.removeprefix(problems.TYPE_PREFIX)
        assert f"| `{name}` | {kind.status} | **{kind.title}**. {kind.when} |" in description
    assert "`about:blank`" in description


def error_examples(openapi: dict[str, Any]) -> list[tuple[str, str, str, str, Any, dict[str, Any]]]:
    """Every documented error example: route, status, name, body, and the body's schema."""
    found = []
    for path, item in openapi["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if status[0] not in "45":
                    continue
                content = response["content"]["application/problem+json"]
                schema = {**content["schema"], "components": openapi["components"]}
                for name, example in content["examples"].items():
                    found.append((path, method, status, name, example["value"], schema))
    return found


def guarded_document() -> dict[str, Any]:
    return create_app(Settings(database_url="sqlite+aiosqlite://", api_token=TOKEN)).openapi()


EXAMPLES = error_examples(guarded_document())


@pytest.mark.parametrize(
    ("path", "method", "status", "name", "body", "schema"),
    EXAMPLES,
    ids=[f"{m.upper()} {p} {s} {n}" for p, m, s, n, _, _ in EXAMPLES],
)
async def test_an_error_example_is_what_the_service_really_answers(
    sqlite_url: str,
    path: str,
    method: str,
    status: str,
    name: str,
    body: Any,
    schema: dict[str, Any],
) -> None:
    assert jsonschema_rs.validator_for(schema).is_valid(body), body
    assert body["message"] == body["detail"] != "string"
    assert problems.TYPES[body["type"]].status == body["status"] == int(status)
    app = create_app(Settings(database_url=sqlite_url, api_token=TOKEN))
    async with serving(app) as client:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        document = (await client.get("/openapi.json")).json()
        real = await PRODUCERS[name](Route(document, app, client, path, method))

    assert (real.status_code, real.json()) == (int(status), body)
    assert real.headers["content-type"] == "application/problem+json"


class Route:
    """One operation of the document, and the app and client to call it with."""

    def __init__(
        self,
        document: dict[str, Any],
        app: FastAPI,
        client: httpx.AsyncClient,
        path: str,
        method: str,
    ) -> None:
        self.app, self.client, self.path, self.method = app, client, path, method
        self.operation = document["paths"][path][method]

    def url(self, **values: str) -> str:
        url = self.path
        for parameter in self.operation.get("parameters", []):
            if parameter["in"] == "path":
                [example, *_] = parameter["examples"].values()
                value = values.get(parameter["name"], example["value"])
                url = url.replace("{" + parameter["name"] + "}", value)
        return url

    def body(self, **changes: Any) -> Any:
        if "requestBody" not in self.operation:
            return None
        examples = self.operation["requestBody"]["content"]["application/json"]["examples"]
        [example, *_] = examples.values()
        return {**example["value"], **changes}

    async def send(self, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("json", self.body())
        return await self.client.request(self.method, self.url(), **kwargs)

    async def handled(self, exc: Exception) -> httpx.Response:
        """The app's own answer to ``exc``, raised by this route: as its handler writes it."""
        scope = {"type": "http", "method": self.method.upper(), "path": self.url(), "headers": []}
        answer = self.app.exception_handlers[type(exc)](Request(scope), exc)
        assert inspect.isawaitable(answer)
        response = await answer
        return httpx.Response(
            response.status_code, content=bytes(response.body), headers=dict(response.headers)
        )


async def _example_request(route: Route) -> httpx.Response:
    # On an empty service: the unknown batch, order or sku of the examples.
    return await route.send()


async def _again_with_more(route: Route, field: str) -> httpx.Response:
    await _setup_batch(route)
    if field == "qty" and route.path == "/allocate":
        assert (await route.send()).status_code == 202
    return await route.send(json=route.body(qty=route.body()["qty"] + 1))


async def _setup_batch(route: Route) -> None:
    batch = {"ref": "batch-001", "sku": "SMALL-TABLE", "qty": 20}
    assert (await route.client.post("/batches", json=batch)).status_code == 201


async def _key_reused(route: Route) -> httpx.Response:
    key = {"Idempotency-Key": "reused-key"}
    assert (await route.send(headers=key)).status_code < 500
    return await route.send(headers=key, json=route.body(qty=route.body()["qty"] + 1))


async def _key_in_progress(route: Route) -> httpx.Response:
    keys = route.app.state.services.idempotency_keys()

    async def without_waiting() -> Idempotency:
        return Idempotency(keys, wait=0.0)

    route.app.dependency_overrides[dependencies.idempotency] = without_waiting
    model = {"/allocate": schemas.AllocateIn}.get(route.path, schemas.BatchIn)
    request = f"{route.method.upper()} {route.path}"
    await keys.reserve("in-progress", request, fingerprint(request, model(**route.body())))
    return await route.send(headers={"Idempotency-Key": "in-progress"})


async def _not_json(route: Route) -> httpx.Response:
    return await route.send(
        json=None, content=b"not json", headers={"content-type": "application/json"}
    )


async def _missing_qty(route: Route) -> httpx.Response:
    return await route.send(json={k: v for k, v in route.body().items() if k != "qty"})


async def _dots(route: Route) -> httpx.Response:
    # A client would resolve "/.." away: sent percent-encoded, as one that quotes ids does.
    [name] = re.findall(
        r"path\.(\w+):",
        route.operation["responses"]["422"]["content"]["application/problem+json"]["examples"][
            "an invalid identifier"
        ]["value"]["detail"],
    )
    return await route.client.request(route.method, route.url(**{name: "%2E%2E"}))


async def _no_token(route: Route) -> httpx.Response:
    del route.client.headers["Authorization"]
    return await route.send()


async def _another_token(route: Route) -> httpx.Response:
    return await route.send(headers={"Authorization": "Bearer not-the-token"})


async def _too_large(route: Route) -> httpx.Response:
    return await route.send(json=route.body(padding="x" * 70_000))


async def _form(route: Route) -> httpx.Response:
    form = {key: str(value) for key, value in route.body().items()}
    return await route.send(json=None, data=form)


async def _database_unreachable(route: Route) -> httpx.Response:
    # Up, then the database gone: where it was, nothing listens now.
    gone = build_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/allocation")
    route.app.state.services.engine.override(providers.Object(gone))
    try:
        return await route.client.get("/ready")
    finally:
        await gone.dispose()


Producer = Callable[[Route], Awaitable[httpx.Response]]
PRODUCERS: dict[str, Producer] = {
    "unknown batch": _example_request,
    "unknown sku": _example_request,
    "no allocations": _example_request,
    "no allocation": _example_request,
    "unknown order": _example_request,
    "reference used with other details": lambda route: _again_with_more(route, "ref"),
    "order holds another quantity": lambda route: _again_with_more(route, "qty"),
    "write kept colliding": lambda route: route.handled(ConcurrencyError("kept colliding")),
    "database down": lambda route: route.handled(DatabaseUnavailable("connection refused")),
    "key in progress": _key_in_progress,
    "key used with another body": _key_reused,
    "a body that is not JSON": _not_json,
    "a missing field": _missing_qty,
    "an invalid identifier": _dots,
    "no token": _no_token,
    "another token": _another_token,
    "too large": _too_large,
    "not json": _form,
    "database unreachable": _database_unreachable,
}


async def test_every_error_example_has_a_real_answer_to_compare_with() -> None:
    assert {name for _, _, _, name, _, _ in EXAMPLES} == set(PRODUCERS)
    statuses = {status for _, _, status, _, _, _ in EXAMPLES}
    assert statuses == {"400", "401", "404", "409", "413", "415", "422", "503"}


@pytest.mark.parametrize(("path", "method", "statuses"), ROUTES)
async def test_every_error_says_when_it_happens(
    guarded_openapi: dict[str, Any], path: str, method: str, statuses: set[str]
) -> None:
    responses = guarded_openapi["paths"][path][method]["responses"]
    described = {s: responses[s]["description"] for s in statuses if s[0] in "45"}
    assert all(d and d != "Additional Response" for d in described.values()), described
    assert "errors" in described["422"]
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
    # A plain optional string: not `string | (string | null)`.
    assert parameter["schema"]["type"] == "string"
    assert not {"anyOf", "oneOf"} & set(parameter["schema"])
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
    assert r.headers["location"] == f"/orders/{orderid}"
    r = await client.get(f"/allocations/{orderid}")
    assert r.json() == [{"sku": line["value"]["sku"], "batchref": ref}]
    assert (await client.patch(f"/batches/{ref}", json=change["value"])).status_code == 202


def success_examples(openapi: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Each operation's example bodies of its success, by name; each must have some."""
    found = {}
    for path, item in openapi["paths"].items():
        for method, operation in item.items():
            [status] = [s for s in operation["responses"] if s.startswith("2")]
            [content] = operation["responses"][status]["content"].values()
            examples = content.get("examples", {})
            assert examples, f"{method.upper()} {path} {status} shows no example"
            found[path, method] = {name: e["value"] for name, e in examples.items()}
    return found


async def test_every_success_has_an_example_and_it_is_what_the_service_answers(
    client: httpx.AsyncClient, openapi: dict[str, Any]
) -> None:
    # The examples of the requests, tried in order, as the examples of the answers say.
    [warehouse, shipment] = try_it_out_examples(openapi, "/batches", "post")
    [line] = try_it_out_examples(openapi, "/allocate", "post")
    [change] = try_it_out_examples(openapi, "/batches/{ref}", "patch")
    orderid, sku = line["value"]["orderid"], line["value"]["sku"]
    ref = warehouse["value"]["ref"]
    too_many = {**line["value"], "orderid": "order-002", "qty": 100}
    answers: dict[tuple[str, str], list[Any]] = {
        ("/add_batch", "post"): [(await client.post("/add_batch", json=warehouse["value"]))],
        ("/batches", "post"): [(await client.post("/batches", json=warehouse["value"]))],
    }
    assert (await client.post("/batches", json=shipment["value"])).status_code == 201
    answers["/allocate", "post"] = [await client.post("/allocate", json=line["value"])]
    assert (await client.post("/allocate", json=too_many)).status_code == 202
    reads = {
        "/batches/{ref}": [f"/batches/{ref}"],
        "/allocations/{orderid}": [f"/allocations/{orderid}"],
        "/allocations/{orderid}/{sku}": [f"/allocations/{orderid}/{sku}"],
        "/orders/{orderid}": [f"/orders/{orderid}", "/orders/order-002"],
        "/products/{sku}": [f"/products/{sku}"],
        "/health": ["/health"],
        "/ready": ["/ready"],
    }
    for path, urls in reads.items():
        answers[path, "get"] = [await client.get(url) for url in urls]
    answers["/batches/{ref}", "patch"] = [
        await client.patch(f"/batches/{ref}", json=change["value"])
    ]
    metrics = (await client.get("/metrics")).text

    for (path, method), examples in success_examples(openapi).items():
        if path == "/metrics":
            [text] = examples.values()
            for sample in text.splitlines():
                # The help and type of each family, and each family's name, are the real ones.
                assert (
                    sample if sample.startswith("#") else sample.split("{")[0].split()[0]
                ) in metrics
            continue
        real = answers[path, method]
        assert all(r.status_code < 300 for r in real), (path, [r.text for r in real])
        assert [r.json() for r in real] == list(examples.values()), (method, path)


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
        assert parameter["schema"]["pattern"] == fields.ID_PATTERN
        assert "`.` or `..`" in parameter["description"]


@pytest.mark.parametrize(
    ("model", "names"),
    [("BatchIn", {"ref", "sku"}), ("AllocateIn", {"orderid", "sku"})],
)
async def test_body_identifiers_say_what_the_service_accepts(
    openapi: dict[str, Any], model: str, names: set[str]
) -> None:
    properties = openapi["components"]["schemas"][model]["properties"]
    for field in names:
        assert properties[field]["pattern"] == fields.ID_PATTERN, field
        assert "`.` or `..`" in properties[field]["description"]
    # JSON Schema's integers include 573.0, and so does the service.
    assert properties["qty"]["type"] == "integer"


async def test_every_operation_id_is_the_routes_name(openapi: dict[str, Any]) -> None:
    ids = {
        (path, method): operation["operationId"]
        for path, item in openapi["paths"].items()
        for method, operation in item.items()
    }
    assert ids == {
        ("/add_batch", "post"): "add_batch_book",
        ("/batches", "post"): "add_batch",
        ("/batches/{ref}", "get"): "get_batch",
        ("/batches/{ref}", "patch"): "change_batch_quantity",
        ("/allocate", "post"): "allocate",
        ("/allocations/{orderid}", "get"): "get_allocations",
        ("/allocations/{orderid}/{sku}", "get"): "get_allocation",
        ("/orders/{orderid}", "get"): "get_order",
        ("/products/{sku}", "get"): "get_product",
        ("/health", "get"): "health",
        ("/ready", "get"): "ready",
        ("/metrics", "get"): "get_metrics",
    }


async def test_every_json_answer_has_a_named_schema(openapi: dict[str, Any]) -> None:
    # Generated clients name a model after its schema: Health, not
    # "Response Health Health Get".
    for path, item in openapi["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                for media_type, content in response.get("content", {}).items():
                    if not media_type.endswith("json"):
                        continue
                    schema = content["schema"]
                    named = schema.get("items", schema)
                    assert set(named) == {"$ref"}, (path, method, status, schema)


async def test_the_service_describes_itself(openapi: dict[str, Any]) -> None:
    assert openapi["info"]["title"] == "Allocation service"
    description = " ".join(openapi["info"]["description"].split())
    for subject in ["202 Accepted", "`Location`", "read model", "problem details", "`type`"]:
        assert subject in description
    # A few lines above the first operation; the details are in the sections below.
    assert len(description) < 800


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
            {
                "/allocations/{orderid}",
                "/allocations/{orderid}/{sku}",
                "/orders/{orderid}",
                "/products/{sku}",
            },
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


async def test_the_413_example_names_the_services_own_limit(sqlite_url: str) -> None:
    app = create_app(Settings(database_url=sqlite_url, max_body_bytes=2048))
    async with serving(app) as client:
        document = (await client.get("/openapi.json")).json()
        real = await client.post(
            "/batches", json={"ref": "b", "sku": "s", "qty": 1, "x": "y" * 3000}
        )
    content = document["paths"]["/batches"]["post"]["responses"]["413"]["content"]
    [example] = content["application/problem+json"]["examples"].values()
    assert (real.status_code, real.json()) == (413, example["value"])
    assert "2048" in example["value"]["detail"]
