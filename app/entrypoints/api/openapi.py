"""What /docs and /openapi.json say about the service as a whole, and about every answer."""

from typing import Any

from fastapi import FastAPI
from fastapi import status as http
from fastapi.routing import APIRoute

from app.config import Settings
from app.entrypoints.api import idempotency, schemas, security
from app.entrypoints.api.errors import COLLIDED
from app.entrypoints.api.errors import UNAVAILABLE as UNAVAILABLE_MESSAGE
from app.entrypoints.api.schemas import Error, InvalidInput

DEFAULT_MAX_BODY_BYTES: int = Settings.model_fields["max_body_bytes"].default

DESCRIPTION = """
Allocates warehouse stock (batches) to customer order lines.

**Writes are commands.** `POST /batches` (or the book's `POST /add_batch`)
answers **201 Created**; `POST /allocate` and `PATCH /batches/{ref}` answer
**202 Accepted**. Each write carries a `Location` header naming where to read
what it did: `/batches/{ref}` for a batch, `/allocations/{orderid}` for an
order. The write's own body says only which batch or order it was about.

**Reads come from read models.** The `GET` routes answer from projection
tables that the write's events keep up to date, and those are up to date by
the time the write's answer is sent: follow the `Location` at once and the
change is there.

Try it here: add the example batch, allocate the example line, then read
`GET /allocations/order-001`. It names `batch-001`.

**Errors** all have one body, `{"message": "..."}`, a sentence for a person
to read; a 422 adds `detail`, each invalid field as `{"loc", "msg", "type"}`.

| status | when |
|---|---|
| 400 | an order line names a sku no batch was ever added for |
| 401 | a write without the API token, when the service has one set |
| 404 | no batch, order allocation or sku by that name |
| 409 | the write contradicts what exists, or kept colliding with concurrent writes |
| 413 | a request body over the size limit (64 KiB unless configured) |
| 422 | invalid input: `message` names the first field, `detail` lists each |
| 503 | the database is unavailable: retry after the seconds in `Retry-After` |

**Writes** need `Authorization: Bearer <token>` when the service has an
`API_TOKEN` set (this page then shows "Authorize" above); reads never do.

**Retrying a POST** is safe with an `Idempotency-Key` header: a repeat with the
same key and body gets the first answer (marked `Idempotent-Replayed: true`)
and does not run again. The same key with another body is a 422.

Identifiers are 1 to 255 printable characters without `/`: no control
characters, no invisible format or separator characters, and no spaces but
U+0020; not blank, and not `.` or `..`, which every URL client resolves away.
Quantities are integers from 1 to 1,000,000,000 (0 is allowed when changing a
batch), and `5.0` is the integer 5, as JSON Schema has it. Dates are
`YYYY-MM-DD`.
"""

TAGS: list[dict[str, Any]] = [
    {
        "name": "batches",
        "description": "Stock: a batch of one sku, in the warehouse or arriving on a date. "
        "Add one, read its quantities, change how much was purchased.",
    },
    {
        "name": "allocations",
        "description": "Order lines allocated to batches: warehouse stock first, then the "
        "earliest shipment. Allocate a line, then read where it went.",
    },
    {
        "name": "products",
        "description": "Stock of a sku as a whole: available now, arriving, and per batch.",
    },
    {
        "name": "operations",
        "description": "Probes for orchestrators and load balancers: liveness and readiness.",
    },
]

Responses = dict[int | str, dict[str, Any]]
Bodies = dict[str, dict[str, Any]]


def said(**examples: str) -> Bodies:
    """Error bodies, each named by the case it shows: ``said(unknown_sku="Invalid sku X")``."""
    return {name.replace("_", " "): {"message": message} for name, message in examples.items()}


def operation_id(route: APIRoute) -> str:
    """An operation's id is its route's name: ``allocate``, not ``allocate_allocate_post``."""
    return route.name


INVALID = (
    "Invalid input: `message` names the first invalid field, `detail` lists each "
    "(a body that is not JSON has a `message` only)."
)
INVALID_BODY: Bodies = {
    "a missing field": {
        "message": "body.qty: Field required",
        "detail": [{"loc": ["body", "qty"], "msg": "Field required", "type": "missing"}],
    },
    "a body that is not JSON": {"message": "The request body is not valid JSON (at character 0)"},
}
_DOTS = "Value error, must not be '..': a URL cannot name it as a path segment"
INVALID_PATH: Bodies = {
    "an invalid identifier": {
        "message": f"path.{{name}}: {_DOTS}",
        "detail": [{"loc": ["path", "{name}"], "msg": _DOTS, "type": "value_error"}],
    },
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


def error_responses(
    described: dict[int, tuple[str, Bodies]], invalid: Bodies | None = None, name: str = ""
) -> Responses:
    """Each status of ``described`` with its real body, and the 422 and 503 every route has.

    ``described`` gives each status's description and example bodies; ``invalid``
    the 422's examples, by default those of the path parameter ``name``.
    """
    if invalid is None:
        invalid = {case: _named(body, name or "id") for case, body in INVALID_PATH.items()}
    statuses = {
        **described,
        422: (INVALID, invalid),
        503: (UNAVAILABLE, said(database_down=UNAVAILABLE_MESSAGE)),
    }
    responses: Responses = {}
    for status, (description, bodies) in sorted(statuses.items()):
        responses[status] = {
            "model": InvalidInput if status == 422 else Error,
            "description": description,
            "content": {"application/json": {"examples": _examples(bodies)}},
        }
    responses[503]["headers"] = _RETRY_AFTER
    return responses


def _examples(bodies: Bodies) -> dict[str, Any]:
    return {case: {"summary": case, "value": body} for case, body in bodies.items()}


def _named(body: dict[str, Any], name: str) -> dict[str, Any]:
    named: dict[str, Any] = {"message": body["message"].replace("{name}", name)}
    if "detail" in body:
        named["detail"] = [
            {**d, "loc": [name if part == "{name}" else part for part in d["loc"]]}
            for d in body["detail"]
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


def too_large(max_bytes: int) -> str:
    """What a 413 says: as app.entrypoints.api.middleware.BodyLimit words it."""
    return f"The request body is larger than {max_bytes} bytes"


def write_errors(described: dict[int, tuple[str, Bodies]]) -> Responses:
    """``errors`` of a write route: with 401, for when API_TOKEN is set, and 413."""
    responses = error_responses(
        {
            401: (UNAUTHORIZED, said(no_token=security.MISSING, another_token=security.INVALID)),
            413: (TOO_LARGE, said(too_large=too_large(DEFAULT_MAX_BODY_BYTES))),
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
    _add_examples(result[409], said(key_in_progress=idempotency.IN_PROGRESS))
    result[422]["description"] += KEY_REUSED
    _add_examples(result[422], said(key_used_with_another_body=idempotency.OTHER_BODY))
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
            _fit(generate(), token=token, max_bytes=max_body_bytes)
        schema: dict[str, Any] = app.openapi_schema or generate()
        return schema

    app.openapi = document  # type: ignore[method-assign]


def _fit(schema: dict[str, Any], token: bool, max_bytes: int) -> None:
    if not token:
        schema.get("components", {}).pop("securitySchemes", None)
    for item in schema["paths"].values():
        for operation in item.values():
            responses = operation.get("responses", {})
            if not token:
                operation.pop("security", None)
                responses.pop("401", None)
            if "413" in responses:
                content = responses["413"]["content"]["application/json"]
                content["examples"] = _examples(said(too_large=too_large(max_bytes)))


def located(status: int, where: str, links: dict[str, Any] | None = None) -> Responses:
    """The ``Location`` header of a write's answer, naming where to read the result.

    ``links`` are the calls that can follow, with the values they take from this one.
    """
    header = {"description": f"Where to read the result: {where}.", "schema": {"type": "string"}}
    response: dict[str, Any] = {"headers": {"Location": header}}
    if links:
        response["links"] = links
    return {status: response}


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
            said(
                reference_used_with_other_details="Batch batch-001 already exists with "
                "different details",
                write_kept_colliding=COLLIDED,
            ),
        )
    }
)
_BATCH_CREATED = located(201, "the batch, `/batches/{ref}`", AFTER_BATCH_ADDED)


# POST /batches, and the book's POST /add_batch: one operation under two paths.
_ADD_BATCH_ROUTE: dict[str, Any] = {
    "status_code": http.HTTP_201_CREATED,
    "response_model": schemas.BatchCreated,
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
    "response_model": schemas.BatchOut,
    "response_description": "The batch.",
    "responses": error_responses(
        {404: ("No batch has this reference.", said(unknown_batch="Unknown batch batch-001"))},
        name="ref",
    ),
    "tags": ["batches"],
    "summary": "Read a batch's quantities",
    "description": "How many units were `purchased`, how many are `allocated` to order "
    "lines, and how many are still `available`. Served from the batches read model.",
}

CHANGE_BATCH_QUANTITY: dict[str, Any] = {
    "status_code": http.HTTP_202_ACCEPTED,
    "response_model": schemas.BatchAccepted,
    "response_description": "Accepted: read the batch at `Location`.",
    "responses": {
        **located(202, "the batch, `/batches/{ref}`", AFTER_BATCH_CHANGED),
        **write_errors(
            {
                404: (
                    "No batch has this reference.",
                    said(unknown_batch="Unknown batch batch-001"),
                ),
                409: (
                    "The write kept colliding with concurrent writes to the same sku (try again).",
                    said(write_kept_colliding=COLLIDED),
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
    "status_code": http.HTTP_202_ACCEPTED,
    "response_model": schemas.AllocationAccepted,
    "response_description": "Accepted: read the order's allocations at `Location`.",
    "responses": idempotent(
        {
            **located(202, "the order's allocations, `/allocations/{orderid}`", AFTER_ALLOCATION),
            **write_errors(
                {
                    400: (
                        "No batch of this sku was ever added: `Invalid sku ...`.",
                        said(unknown_sku="Invalid sku SMALL-TABLE"),
                    ),
                    409: (
                        "The order already holds a different quantity of this sku; or the "
                        "write kept colliding with concurrent writes to the same sku (try again).",
                        said(
                            order_holds_another_quantity="Order order-001 already has 2 of "
                            "SMALL-TABLE allocated to batch batch-001",
                            write_kept_colliding=COLLIDED,
                        ),
                    ),
                }
            ),
        }
    ),
    "tags": ["allocations"],
    "summary": "Allocate an order line",
    "description": "Allocates the line to a batch of its sku: warehouse stock first, then "
    "the shipment arriving soonest. Answers 202 with `Location: /allocations/{orderid}`; "
    "read the allocation there. A line no batch has stock for is accepted but is not "
    "allocated: it is missing there, and `GET /orders/{orderid}` (the `Link` header, "
    '`rel="order"`) says it is out of stock.\n\n'
    "Sending the same line again changes nothing; the same order asking for a different "
    "quantity of the sku is a 409.",
}

GET_ALLOCATIONS: dict[str, Any] = {
    "response_model": list[schemas.Allocation],
    "response_description": "One entry per allocated line: its sku and the batch it is in.",
    "responses": error_responses(
        {
            404: (
                "The order has no allocated lines: unknown, or every line out of stock.",
                said(no_allocations="No allocations for order order-001"),
            )
        },
        name="orderid",
    ),
    "tags": ["allocations"],
    "summary": "Read where an order's lines are allocated",
    "description": "The batch each line of the order is allocated to, from the allocations "
    "read model. This is where `POST /allocate` points its `Location`.",
}

GET_ORDER: dict[str, Any] = {
    "response_model": schemas.Order,
    "response_description": "Every line of the order the service accepted, and its state.",
    "responses": error_responses(
        {
            404: (
                "The service never accepted a line of this order.",
                said(unknown_order="No order order-001"),
            )
        },
        name="orderid",
    ),
    "tags": ["allocations"],
    "summary": "Read an order: each line allocated, or out of stock",
    "description": "Each line `POST /allocate` accepted for the order: `allocated` (with its "
    "batch), or `out_of_stock` when no batch could take it. Unlike "
    "`GET /allocations/{orderid}`, an order whose every line is out of stock is a 200 "
    "here, and only an order never seen is a 404. `POST /allocate` links here.",
}

GET_ALLOCATION: dict[str, Any] = {
    "response_model": schemas.Allocation,
    "response_description": "The sku and the batch the line is in.",
    "responses": error_responses(
        {
            404: (
                "The order has no allocated line of this sku.",
                said(no_allocation="Order order-001 has no allocation of SMALL-TABLE"),
            )
        },
        name="orderid",
    ),
    "tags": ["allocations"],
    "summary": "Read where one line of an order is allocated",
    "description": "The batch the order's line of `sku` is allocated to, from the "
    "allocations read model.",
}

GET_PRODUCT: dict[str, Any] = {
    "response_model": schemas.ProductOut,
    "response_description": "The sku's stock, and each batch in the order allocation uses them.",
    "responses": error_responses(
        {
            404: (
                "No batch of this sku was ever added.",
                said(unknown_sku="Unknown sku SMALL-TABLE"),
            )
        },
        name="sku",
    ),
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
