"""What /openapi.json says beyond what FastAPI reads off the routes and models.

A route's docstring is its description and its models carry their examples;
its errors are made here from the problem registry (app.entrypoints.http.problems),
from the causes the route lists: each status, what causes it, and an example
answer of each cause. The errors section of /docs is the registry too.
"""

from collections.abc import Iterable
from itertools import groupby
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel

from app.entrypoints.http import problems
from app.entrypoints.http.problems import ProblemType
from app.entrypoints.http.schemas import Problem

DESCRIPTION = """
Allocates warehouse stock (batches) to customer order lines, as *Architecture
Patterns with Python* does.

**Try it:** `POST /add_batch`, `POST /allocate`, then `GET /orders/{orderid}`;
the examples work as they stand.

Writes answer **201 Created** or **202 Accepted** with a `Location`: follow it
to read what the write did, from read models it has already updated. Errors
are RFC 9457 problem details, whose `type` names the cause: the **errors**
section, last, lists every one. Every `GET` answers `HEAD` too.

**Events:** what the service consumes and publishes on Redis and NATS
JetStream is in [its AsyncAPI document](asyncapi) (`/asyncapi.json`).
"""

ERRORS = (
    "Every error is an RFC 9457 problem (`application/problem+json`, the `Problem` "
    "schema). `type` names the cause: a `tag:` URI, an identifier rather than an address, "
    "the same wherever the service runs. `message` is the book's member, the same text "
    f"as `detail`.\n\nEach `type` is `{problems.TYPE_PREFIX}` and a name:\n\n"
    "| name | status | title, and when |\n|---|---|---|\n"
    + "".join(
        f"| `{kind.name}` | {kind.status} | **{kind.title}**. {kind.when} |\n"
        for kind in problems.TYPES.values()
    )
    + "\nAny other HTTP error, none expected, is `about:blank`, titled with its status's "
    "own phrase.\n"
)

TAGS: list[dict[str, Any]] = [
    {
        "name": "batches",
        "description": "Stock: a batch of one sku, in the warehouse or arriving on a date. "
        "Ids are 1 to 255 printable characters without `/`; quantities integers up to "
        "1,000,000,000 (`5.0` is 5); dates `YYYY-MM-DD`.",
    },
    {
        "name": "allocations",
        "description": "Order lines allocated to batches: warehouse stock first, then the "
        "earliest shipment. Writes are commands; reads come from read models, up to date by "
        "the time the write answers. A write sent again with its `Idempotency-Key` gets the "
        "first answer.",
    },
    {
        "name": "holds",
        "description": "Stock kept for a checkout, every line or none, until it is "
        "confirmed into an order, released, or expires by itself.",
    },
    {"name": "products", "description": "Stock of a sku as a whole: now, arriving, per batch."},
    {"name": "operations", "description": "Liveness, readiness and metrics, for operators."},
    {"name": "errors", "description": ERRORS},  # no operation: the list of every type
]

Responses = dict[int | str, dict[str, Any]]
_HEADERS = {
    "Retry-After": ("Seconds to wait before trying again.", "integer"),
    "WWW-Authenticate": ('How to authenticate: `Bearer realm="allocation"`.', "string"),
    "Allow": ("The methods the path takes.", "string"),
    "Location": ("Where to read what the write did.", "string"),
    "Idempotent-Replayed": ("`true`: the recorded answer to an earlier request.", "string"),
}
# The errors of every route, of every write, and of every write with an Idempotency-Key.
EVERY = (problems.INVALID_INPUT, problems.DATABASE_UNAVAILABLE)
WRITE = (
    problems.TOKEN_MISSING,
    problems.TOKEN_INVALID,
    problems.BODY_TOO_LARGE,
    problems.NOT_JSON_CONTENT,
    problems.INVALID_JSON,
    problems.WRITE_COLLIDED,
)
KEYED = (problems.REQUEST_IN_PROGRESS, problems.KEY_REUSED)


def _headers(names: Iterable[str]) -> dict[str, Any]:
    return {
        name: {"description": _HEADERS[name][0], "schema": {"type": _HEADERS[name][1]}}
        for name in dict.fromkeys(names)
    }


def errors(
    *causes: ProblemType, write: bool = False, keyed: bool = False, every: bool = True
) -> Responses:
    """A route's error answers: its own ``causes``, and those every route (and write) has."""
    kinds = [*causes, *(EVERY if every else ()), *(WRITE if write else ())]
    kinds += KEYED if keyed else ()
    responses: Responses = {}
    for status, group in groupby(sorted(kinds, key=lambda k: k.status), lambda k: k.status):
        listed = list(group)
        responses[status] = {
            "model": Problem,
            "description": " ".join(f"**{k.title}** (`{k.name}`): {k.when}" for k in listed),
            "content": {
                "application/json": {
                    "examples": {k.title: {"value": problems.example(k)} for k in listed}
                }
            },
        }
        headers = _headers(h for k in listed for h in k.headers)
        if headers:
            responses[status]["headers"] = headers
    return responses


def located(status: int, links: dict[str, Any], keyed: bool = False) -> Responses:
    """A write's success: its ``Location``, and the calls that can follow it."""
    headers = ["Location", *(["Idempotent-Replayed"] if keyed else [])]
    return {status: {"headers": _headers(headers), "links": links}}


def link(
    operation: str,
    description: str,
    parameters: dict[str, str] | None = None,
    body: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A call that can follow, taking its ``parameters`` (and ``body``) from this one's request."""
    found: dict[str, Any] = {"operationId": operation, "description": description}
    if parameters:
        found["parameters"] = parameters
    if body:
        found["requestBody"] = body
    return found


def operation_id(route: APIRoute) -> str:
    """An operation's id is its route's name: ``allocate``, not ``allocate_allocate_post``."""
    return route.name


def install(app: FastAPI, models: Iterable[type[BaseModel]], *, token: bool) -> None:
    """Make /openapi.json say what FastAPI leaves out or cannot know.

    Errors under the problem media type; examples with their nulls (FastAPI
    drops every null from the document: ``"eta": null``); and without a token
    (``API_TOKEN``) nothing needs one: no security scheme, and no 401.
    """
    generate = app.openapi
    examples = {m.__name__: m.model_json_schema().get("examples") for m in models}

    def document() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for name, schema_examples in examples.items():
            if schema_examples and name in schema["components"]["schemas"]:
                schema["components"]["schemas"][name]["examples"] = schema_examples
        for route in app.routes:
            if isinstance(route, APIRoute) and route.include_in_schema:
                for method in route.methods or ():
                    _fit(schema["paths"][route.path_format][method.lower()], route, token)
        if not token:
            schema["components"].pop("securitySchemes", None)
        # Each problem type's constant, named for a generated client (openapi-python-client).
        kinds = schema["components"]["schemas"]["ProblemType"]
        kinds["x-enum-varnames"] = [problems.TYPES[uri].constant for uri in kinds["enum"][:-1]]
        kinds["x-enum-varnames"].append("ABOUT_BLANK")
        return schema

    app.openapi = document  # type: ignore[method-assign]


def _fit(operation: dict[str, Any], route: APIRoute, token: bool) -> None:
    if not token:
        operation.pop("security", None)
        operation["responses"].pop("401", None)
    for status, response in operation["responses"].items():
        declared = route.responses.get(int(status), {}).get("content", {})
        if status[0] in "45":
            content = response["content"]
            content[problems.MEDIA_TYPE] = content.pop("application/json")
            content[problems.MEDIA_TYPE]["examples"] = declared["application/json"]["examples"]
