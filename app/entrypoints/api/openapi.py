"""What /docs and /openapi.json say about the service as a whole, and about every answer."""

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from app.config import Settings
from app.entrypoints.api import idempotency, json_bodies, problems, security
from app.entrypoints.api.errors import COLLIDED
from app.entrypoints.api.errors import UNAVAILABLE as UNAVAILABLE_MESSAGE
from app.entrypoints.api.problems import ProblemType
from app.entrypoints.api.schemas import Problem

DEFAULT_MAX_BODY_BYTES: int = Settings.model_fields["max_body_bytes"].default

DESCRIPTION = """
Allocates warehouse stock (batches) to customer order lines, as *Architecture
Patterns with Python* does.

**Try it:** `POST /add_batch`, `POST /allocate`, then `GET /orders/{orderid}`;
the examples work as they stand.

Writes answer **201 Created** or **202
Accepted** with a `Location`: follow it to read what the write did, from read
models it has already updated. Errors are RFC 9457 problem details, whose `type`
names the cause: the **errors** section, last, lists every one. Each tag below
says more of its routes; every `GET` answers `HEAD` too.

**Events:** what the service consumes and publishes on Redis and NATS
JetStream is in [its AsyncAPI document](asyncapi) (`/asyncapi.json`).
"""

ERRORS = (
    "Every error is an RFC 9457 problem (`application/problem+json`, the `Problem` "
    "schema). `type` names the cause: a `tag:` URI, an identifier rather than an address, "
    "the same wherever the service runs. `message` is the book's member, the same text "
    "as `detail`.\n\n"
    f"Each `type` is `{problems.TYPE_PREFIX}` and a name:\n\n"
    "| name | status | title, and when |\n|---|---|---|\n"
    + "".join(
        f"| `{kind.uri.removeprefix(problems.TYPE_PREFIX)}` | {kind.status} "
        f"| **{kind.title}**. {kind.when} |\n"
        for kind in problems.TYPES.values()
    )
    + "\nAny other HTTP error, none expected, is `about:blank`, titled with its status's "
    "own phrase.\n"
)


TAGS: list[dict[str, Any]] = [
    {
        "name": "batches",
        "description": "Stock: a batch of one sku, in the warehouse or arriving on a date. "
        "Add one (201, `Location: /batches/{ref}`), read its quantities, change how much "
        "was purchased. Ids are 1 to 255 printable characters without `/`; quantities "
        "integers up to 1,000,000,000 (`5.0` is 5); dates `YYYY-MM-DD`.",
    },
    {
        "name": "allocations",
        "description": "Order lines allocated to batches: warehouse stock first, then the "
        "earliest shipment. Allocate a line (202, `Location: /orders/{orderid}`), then read "
        "where it went. Writes are commands; reads come from read models, up to date by "
        "the time the write answers. Sending a write again with its `Idempotency-Key` gets "
        "the first answer.",
    },
    {
        "name": "products",
        "description": "Stock of a sku as a whole: available now, arriving, and per batch.",
    },
    {
        "name": "operations",
        "description": "Probes for orchestrators and load balancers: liveness and readiness; "
        "and metrics for Prometheus.",
    },
    # No operation of its own: the list of every error's type, a section of its own.
    {"name": "errors", "description": ERRORS},
]

Responses = dict[int | str, dict[str, Any]]
Bodies = dict[str, dict[str, Any]]
Answers = dict[str, Any]  # a success's example bodies, by name: objects, lists or text


def said(kind: ProblemType, **examples: str) -> Bodies:
    """Bodies of ``kind``, each named by the case it shows: ``said(KIND, unknown_sku="...")``."""
    return {
        name.replace("_", " "): problems.body(kind, detail) for name, detail in examples.items()
    }


def operation_id(route: APIRoute) -> str:
    """An operation's id is its route's name: ``allocate``, not ``allocate_allocate_post``."""
    return route.name


INVALID = (
    "Invalid input: `errors` lists each invalid field with its own message, and `detail` "
    "names the first (`invalid-input`); or the body is not JSON (`invalid-json`)."
)
INVALID_BODY: Bodies = {
    "a missing field": problems.body(
        problems.INVALID_INPUT,
        "body.qty: Field required",
        errors=[{"loc": ["body", "qty"], "message": "Field required"}],
    ),
    "a body that is not JSON": problems.body(
        problems.INVALID_JSON, "The request body is not valid JSON (at character 0)"
    ),
}
_DOTS = "Value error, must not be '..': a URL cannot name it as a path segment"
INVALID_PATH: Bodies = {
    "an invalid identifier": problems.body(
        problems.INVALID_INPUT,
        f"path.{{name}}: {_DOTS}",
        errors=[{"loc": ["path", "{name}"], "message": _DOTS}],
    ),
}
UNAVAILABLE = (
    "The database is unavailable: retry after the number of seconds in the "
    "`Retry-After` header. Every write is safe to repeat."
)
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer"},
    }
}


def problem_responses(described: dict[int, tuple[str, Bodies]]) -> Responses:
    """Each status of ``described``, a problem: its description and its real example bodies."""
    return {
        status: {
            "model": Problem,
            "description": description,
            # FastAPI puts the model's schema here too; install() gives both the problem's
            # media type.
            "content": {"application/json": {"examples": _examples(bodies)}},
        }
        for status, (description, bodies) in sorted(described.items())
    }


def error_responses(
    described: dict[int, tuple[str, Bodies]], invalid: Bodies | None = None, name: str = ""
) -> Responses:
    """Each status of ``described`` with its real body, and the 422 and 503 every route has.

    ``described`` gives each status's description and example bodies; ``invalid``
    the 422's examples, by default those of the path parameter ``name``.
    """
    if invalid is None:
        invalid = {case: _named(body, name or "id") for case, body in INVALID_PATH.items()}
    responses = problem_responses(
        {
            **described,
            422: (INVALID, invalid),
            503: (
                UNAVAILABLE,
                said(problems.DATABASE_UNAVAILABLE, database_down=UNAVAILABLE_MESSAGE),
            ),
        }
    )
    responses[503]["headers"] = _RETRY_AFTER
    return responses


def _examples(bodies: Answers) -> dict[str, Any]:
    return {case: {"summary": case, "value": body} for case, body in bodies.items()}


def _named(body: dict[str, Any], name: str) -> dict[str, Any]:
    detail = body["detail"].replace("{name}", name)
    named: dict[str, Any] = {**body, "detail": detail, "message": detail}
    if "errors" in body:
        named["errors"] = [
            {**e, "loc": [name if part == "{name}" else part for part in e["loc"]]}
            for e in body["errors"]
        ]
    return named


UNAUTHORIZED = (
    "The service has an API token set and the request did not carry it as "
    "`Authorization: Bearer <token>` (or carried another)."
)
_CHALLENGE = {
    "WWW-Authenticate": {
        "description": 'How to authenticate: `Bearer realm="allocation"`.',
        "schema": {"type": "string"},
    }
}


TOO_LARGE = "The request body is larger than the limit (`MAX_BODY_BYTES`, 64 KiB by default)."
NOT_JSON = "The request body is not declared JSON: send it with `Content-Type: application/json`."


def too_large(max_bytes: int) -> str:
    """What a 413 says: as app.entrypoints.api.middleware.BodyLimit words it."""
    return f"The request body is larger than {max_bytes} bytes"


def write_errors(described: dict[int, tuple[str, Bodies]]) -> Responses:
    """``errors`` of a write route: with 401, for when API_TOKEN is set, 413 and 415."""
    responses = error_responses(
        {
            401: (
                UNAUTHORIZED,
                {
                    **said(problems.TOKEN_MISSING, no_token=security.MISSING),
                    **said(problems.TOKEN_INVALID, another_token=security.INVALID),
                },
            ),
            413: (
                TOO_LARGE,
                said(problems.BODY_TOO_LARGE, too_large=too_large(DEFAULT_MAX_BODY_BYTES)),
            ),
            415: (NOT_JSON, said(problems.NOT_JSON_CONTENT, not_json=json_bodies.NOT_JSON)),
            **described,
        },
        invalid=INVALID_BODY,
    )
    responses[401]["headers"] = _CHALLENGE
    return responses


KEY_REUSED = (
    " Or the `Idempotency-Key` was used before with another body, or on another route: "
    "use a new key for a new request."
)
KEY_IN_PROGRESS = (
    " Or a request with this `Idempotency-Key` is still in progress: send it again after "
    "the seconds in `Retry-After`."
)
_REPLAYED = {
    "Idempotent-Replayed": {
        "description": "`true` when this is the recorded answer to an earlier request "
        "with the same `Idempotency-Key`.",
        "schema": {"type": "string", "enum": ["true"]},
    }
}


def idempotent(responses: Responses) -> Responses:
    """``responses`` of a write that takes an ``Idempotency-Key``, with what the key adds."""
    result = {status: dict(response) for status, response in responses.items()}
    for status, response in result.items():
        if str(status).startswith("2"):
            response["headers"] = {**response.get("headers", {}), **_REPLAYED}
    result[409]["description"] += KEY_IN_PROGRESS
    result[409]["headers"] = {**result[409].get("headers", {}), **_RETRY_AFTER}
    _add_examples(
        result[409], said(problems.REQUEST_IN_PROGRESS, key_in_progress=idempotency.IN_PROGRESS)
    )
    result[422]["description"] += KEY_REUSED
    _add_examples(
        result[422], said(problems.KEY_REUSED, key_used_with_another_body=idempotency.OTHER_BODY)
    )
    return result


def _add_examples(response: dict[str, Any], bodies: Bodies) -> None:
    content = response["content"]["application/json"]
    content["examples"] = {**content["examples"], **_examples(bodies)}


def install(app: FastAPI, *, token: bool, max_body_bytes: int) -> None:
    """Make /openapi.json say what this app's settings make true.

    Without a token (``API_TOKEN``) nothing needs one: no security scheme, and
    no 401. The 413's example names the app's own body limit.
    """
    generate = app.openapi

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            _with_nulls(schema, app.routes)
            _fit(schema, token=token, max_bytes=max_body_bytes)
        return app.openapi_schema or generate()

    app.openapi = document  # type: ignore[method-assign]


def _with_nulls(schema: dict[str, Any], routes: Sequence[BaseRoute]) -> None:
    """Each answer's examples as declared: FastAPI leaves their nulls out (``"eta": null``)."""
    for route in routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        for method in route.methods or ():
            documented = schema["paths"][route.path_format][method.lower()]["responses"]
            for status, response in route.responses.items():
                for media_type, content in response.get("content", {}).items():
                    if "examples" in content:
                        target = documented[str(status)]["content"][media_type]
                        target["examples"] = content["examples"]


PROBLEM = (
    "An error, as RFC 9457 problem details (`application/problem+json`): `type` names its "
    "cause, and the *errors* section lists every one."
)


def _fit(schema: dict[str, Any], token: bool, max_bytes: int) -> None:
    if not token:
        schema.get("components", {}).pop("securitySchemes", None)
    schema["components"]["schemas"]["Problem"]["description"] = PROBLEM
    for item in schema["paths"].values():
        for operation in item.values():
            responses = operation.get("responses", {})
            if not token:
                operation.pop("security", None)
                responses.pop("401", None)
            for status, response in responses.items():
                if status[0] in "45":
                    content = response["content"]
                    content[problems.MEDIA_TYPE] = content.pop("application/json")
            if "413" in responses:
                content = responses["413"]["content"][problems.MEDIA_TYPE]
                content["examples"] = _examples(
                    said(problems.BODY_TOO_LARGE, too_large=too_large(max_bytes))
                )


def located(
    status: int, where: str, answers: Answers, links: dict[str, Any] | None = None
) -> Responses:
    """The ``Location`` header of a write's answer, naming where to read the result.

    ``answers`` are the answer's example bodies; ``links`` the calls that can
    follow, with the values they take from this one.
    """
    header = {"description": f"Where to read the result: {where}.", "schema": {"type": "string"}}
    response: dict[str, Any] = {"headers": {"Location": header}}
    if links:
        response["links"] = links
    return {status: {**response, **answered(status, answers)[status]}}


def answered(status: int, answers: Answers, media_type: str = "application/json") -> Responses:
    """Example bodies of a success, each what the Try-it-out examples, run in order, get."""
    return {status: {"content": {media_type: {"examples": _examples(answers)}}}}


def _link(
    method: str,
    path: str,
    description: str,
    parameters: dict[str, str] | None = None,
    body: dict[str, str] | None = None,
) -> dict[str, Any]:
    pointer = path.replace("~", "~0").replace("/", "~1")
    link: dict[str, Any] = {
        "operationRef": f"#/paths/{pointer}/{method}",
        "description": description,
    }
    if parameters:
        link["parameters"] = parameters
    if body:
        link["requestBody"] = body
    return link


_BATCH_SKU = {"sku": "$request.body#/sku"}
AFTER_BATCH_ADDED = {
    "GetBatch": _link(
        "get", "/batches/{ref}", "Read the batch just added.", {"ref": "$request.body#/ref"}
    ),
    "ChangeBatchQuantity": _link(
        "patch", "/batches/{ref}", "Change its purchased quantity.", {"ref": "$request.body#/ref"}
    ),
    "GetProduct": _link("get", "/products/{sku}", "Read the stock of its sku.", _BATCH_SKU),
    "Allocate": _link(
        "post",
        "/allocate",
        "Allocate an order line of all of it.",
        body={**_BATCH_SKU, "qty": "$request.body#/qty"},
    ),
}
AFTER_BATCH_CHANGED = {
    "GetBatch": _link(
        "get", "/batches/{ref}", "Read the batch's quantities now.", {"ref": "$request.path.ref"}
    ),
}
_ORDER = {"orderid": "$request.body#/orderid"}
AFTER_ALLOCATION = {
    "GetAllocations": _link(
        "get", "/allocations/{orderid}", "Read where the order's lines are allocated.", _ORDER
    ),
    "GetOrder": _link(
        "get",
        "/orders/{orderid}",
        "Read every line of the order: allocated, or out of stock.",
        _ORDER,
    ),
    "GetAllocation": _link(
        "get",
        "/allocations/{orderid}/{sku}",
        "Read where this line is allocated.",
        {**_ORDER, "sku": "$request.body#/sku"},
    ),
    "GetProduct": _link(
        "get", "/products/{sku}", "Read the stock of the sku.", {"sku": "$request.body#/sku"}
    ),
}


# What the examples of the requests get, tried in order: the batches added, the line
# allocated, a line too large for either batch, then the quantity changed.
BATCH_CREATED: Answers = {"the batch's reference": {"ref": "batch-001"}}
LINE_ACCEPTED: Answers = {"the line's order": {"orderid": "order-001"}}
BATCH_READ: Answers = {
    "after the example line": {
        "reference": "batch-001",
        "sku": "SMALL-TABLE",
        "eta": None,
        "purchased": 20,
        "allocated": 2,
        "available": 18,
    }
}
ALLOCATIONS: Answers = {"one line": [{"sku": "SMALL-TABLE", "batchref": "batch-001"}]}
ONE_ALLOCATION: Answers = {"the line": {"sku": "SMALL-TABLE", "batchref": "batch-001"}}
ORDERS: Answers = {
    "a line allocated": {
        "orderid": "order-001",
        "lines": [{"sku": "SMALL-TABLE", "state": "allocated", "batchref": "batch-001"}],
    },
    "a line out of stock": {
        "orderid": "order-002",
        "lines": [{"sku": "SMALL-TABLE", "state": "out_of_stock", "batchref": None}],
    },
}
PRODUCT: Answers = {
    "in the warehouse and arriving": {
        "sku": "SMALL-TABLE",
        "available_now": 18,
        "incoming": 50,
        "batches": [
            {"reference": "batch-001", "eta": None, "available": 18},
            {"reference": "batch-002", "eta": "2031-06-30", "available": 50},
        ],
    }
}
BATCH_ACCEPTED: Answers = {"the batch's reference": {"ref": "batch-001"}}


_ADD_BATCH_TEXT = (
    "Adds `qty` units of `sku`: stock in the warehouse when `eta` is null, a shipment "
    "arriving on `eta` otherwise. Answers 201 with `Location: /batches/{ref}`, where "
    "the batch can be read at once.\n\n"
    "Adding an identical batch again changes nothing and answers 201 again; a reference "
    "already used with another sku, quantity or eta is a 409."
)
_BATCH_ERRORS = write_errors(
    {
        409: (
            "The reference is already used with other details; or the write kept "
            "colliding with concurrent writes to the same sku (try again).",
            {
                **said(
                    problems.BATCH_EXISTS,
                    reference_used_with_other_details="Batch batch-001 already exists with "
                    "different details",
                ),
                **said(problems.WRITE_COLLIDED, write_kept_colliding=COLLIDED),
            },
        )
    }
)
_BATCH_CREATED = located(201, "the batch, `/batches/{ref}`", BATCH_CREATED, AFTER_BATCH_ADDED)


# POST /batches, and the book's POST /add_batch: one operation under two paths
# (app.entrypoints.api.routes declares each route's status and response model).
_ADD_BATCH_ROUTE: dict[str, Any] = {
    "response_description": "Created: read the batch at `Location`.",
    "responses": idempotent({**_BATCH_CREATED, **_BATCH_ERRORS}),
    "tags": ["batches"],
}


# Each operation's documentation: what /docs and /openapi.json say of it.

ADD_BATCH: dict[str, Any] = {
    **_ADD_BATCH_ROUTE,
    "summary": "Add a batch of stock",
    "description": _ADD_BATCH_TEXT,
}

GET_BATCH: dict[str, Any] = {
    "response_description": "The batch.",
    "responses": {
        **answered(200, BATCH_READ),
        **error_responses(
            {
                404: (
                    "No batch has this reference.",
                    said(problems.UNKNOWN_BATCH, unknown_batch="Unknown batch batch-001"),
                )
            },
            name="ref",
        ),
    },
    "tags": ["batches"],
    "summary": "Read a batch's quantities",
    "description": "How many units were `purchased`, how many are `allocated` to order "
    "lines, and how many are still `available`. Served from the batches read model.",
}

CHANGE_BATCH_QUANTITY: dict[str, Any] = {
    "response_description": "Accepted: read the batch at `Location`.",
    "responses": {
        **located(202, "the batch, `/batches/{ref}`", BATCH_ACCEPTED, AFTER_BATCH_CHANGED),
        **write_errors(
            {
                404: (
                    "No batch has this reference.",
                    said(problems.UNKNOWN_BATCH, unknown_batch="Unknown batch batch-001"),
                ),
                409: (
                    "The write kept colliding with concurrent writes to the same sku (try again).",
                    said(problems.WRITE_COLLIDED, write_kept_colliding=COLLIDED),
                ),
            }
        ),
    },
    "tags": ["batches"],
    "summary": "Change a batch's purchased quantity",
    "description": "Sets how many units the batch holds, as when a shipment arrives short. "
    "Order lines that no longer fit are deallocated and allocated again to other batches "
    "of the sku where stock allows; lines no batch can take lose their allocation. "
    "Answers 202 with `Location: /batches/{ref}`.",
}

ALLOCATE: dict[str, Any] = {
    "response_description": "Accepted: read what became of the line at `Location`, the order.",
    "responses": idempotent(
        {
            **located(
                202,
                "the order, `/orders/{orderid}`: each of its lines, allocated or out of stock",
                LINE_ACCEPTED,
                AFTER_ALLOCATION,
            ),
            **write_errors(
                {
                    400: (
                        "No batch of this sku was ever added: `Invalid sku ...`.",
                        said(problems.INVALID_SKU, unknown_sku="Invalid sku SMALL-TABLE"),
                    ),
                    409: (
                        "The order already holds a different quantity of this sku; or the "
                        "write kept colliding with concurrent writes to the same sku (try again).",
                        {
                            **said(
                                problems.LINE_EXISTS,
                                order_holds_another_quantity="Order order-001 already has 2 "
                                "of SMALL-TABLE allocated to batch batch-001",
                            ),
                            **said(problems.WRITE_COLLIDED, write_kept_colliding=COLLIDED),
                        },
                    ),
                }
            ),
        }
    ),
    "tags": ["allocations"],
    "summary": "Allocate an order line",
    "description": "Allocates the line to a batch of its sku: warehouse stock first, then "
    "the shipment arriving soonest. Answers 202 with `Location: /orders/{orderid}`, where "
    "the line is `allocated` to its batch, or `out_of_stock` if no batch has stock for "
    'it: accepted, but not allocated. (`Link`, `rel="order"`, names the same.)\n\n'
    "Sending the same line again changes nothing; the same order asking for a different "
    "quantity of the sku is a 409.",
}

GET_ALLOCATIONS: dict[str, Any] = {
    "response_description": "One entry per allocated line: its sku and the batch it is in.",
    "responses": {
        **answered(200, ALLOCATIONS),
        **error_responses(
            {
                404: (
                    "The order has no allocated lines: unknown, or every line out of stock.",
                    said(
                        problems.NO_ALLOCATIONS, no_allocations="No allocations for order order-001"
                    ),
                )
            },
            name="orderid",
        ),
    },
    "tags": ["allocations"],
    "summary": "Read where an order's lines are allocated",
    "description": "The batch each line of the order is allocated to, from the allocations "
    "read model: the book's read. An order with no line allocated is a 404 here; "
    "`GET /orders/{orderid}` tells an order out of stock from one never seen.",
}

GET_ORDER: dict[str, Any] = {
    "response_description": "Every line of the order the service accepted, and its state.",
    "responses": {
        **answered(200, ORDERS),
        **error_responses(
            {
                404: (
                    "The service never accepted a line of this order.",
                    said(problems.UNKNOWN_ORDER, unknown_order="No order order-001"),
                )
            },
            name="orderid",
        ),
    },
    "tags": ["allocations"],
    "summary": "Read an order: each line allocated, or out of stock",
    "description": "Each line `POST /allocate` accepted for the order: `allocated` (with its "
    "batch), or `out_of_stock` when no batch could take it. Unlike "
    "`GET /allocations/{orderid}`, an order whose every line is out of stock is a 200 "
    "here, and only an order never seen is a 404. `POST /allocate` points its `Location` "
    "here.",
}

GET_ALLOCATION: dict[str, Any] = {
    "response_description": "The sku and the batch the line is in.",
    "responses": {
        **answered(200, ONE_ALLOCATION),
        **error_responses(
            {
                404: (
                    "The order has no allocated line of this sku.",
                    said(
                        problems.NO_ALLOCATION,
                        no_allocation="Order order-001 has no allocation of SMALL-TABLE",
                    ),
                )
            },
            name="orderid",
        ),
    },
    "tags": ["allocations"],
    "summary": "Read where one line of an order is allocated",
    "description": "The batch the order's line of `sku` is allocated to, from the "
    "allocations read model.",
}

GET_PRODUCT: dict[str, Any] = {
    "response_description": "The sku's stock, and each batch in the order allocation uses them.",
    "responses": {
        **answered(200, PRODUCT),
        **error_responses(
            {
                404: (
                    "No batch of this sku was ever added.",
                    said(problems.UNKNOWN_SKU, unknown_sku="Unknown sku SMALL-TABLE"),
                )
            },
            name="sku",
        ),
    },
    "tags": ["products"],
    "summary": "Read the stock of a sku, now and per batch",
    "description": "Units available in the warehouse now, units arriving in shipments, and "
    "what each batch has left. Served from the batches read model, which events keep "
    "up to date.",
}

ADD_BATCH_BOOK: dict[str, Any] = {
    **_ADD_BATCH_ROUTE,
    "summary": "Add a batch of stock (the book's route)",
    "description": "The book's name for `POST /batches`, and the same in every way.\n\n"
    + _ADD_BATCH_TEXT,
}
