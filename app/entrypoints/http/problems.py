"""Every error the service answers: one registry of causes, and one writer of their bodies.

An error is an RFC 9457 problem (``application/problem+json``): ``type``
names its cause, ``title`` says it in a few words, ``status`` and
``detail`` (this occurrence, in a sentence) follow, and ``message`` keeps the
book's member, the same sentence, for the clients that read it.

A type is a ``tag:`` URI (RFC 4151): an identifier, not an address. It is
the same string wherever the service runs, whatever host or ``ROOT_PATH``
serves it, so a caller can compare it; nothing is fetched from it.
docs/api.md and /openapi.json explain each. ``about:blank`` (RFC 9457,
4.2.1) is the type of an HTTP error the service adds nothing to.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.responses import Response

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "tag:allocation-service,2026:problems/"


@dataclass(frozen=True)
class ProblemType:
    """A cause of errors: all that the service answers and documents of it.

    ``detail`` is what an answer's ``detail`` says: the text itself, where it
    is always the same, or an example of it; ``members`` are those of the
    example beyond the five. /openapi.json's examples, the errors section of
    /docs and docs/api.md's table (checked by a test) are made from these.
    """

    uri: str
    status: int
    title: str
    when: str  # what causes it, and what a caller can do
    detail: str
    headers: tuple[str, ...] = ()  # the response headers an answer of it carries
    members: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.uri.removeprefix(TYPE_PREFIX)

    @property
    def constant(self) -> str:
        """Its name as a constant's: ``LINE_EXISTS``."""
        return self.name.upper().replace("-", "_")


TYPES: dict[str, ProblemType] = {}  # every cause the service names, by URI


def _cause(name: str, status: int, title: str, when: str, detail: str, **more: Any) -> ProblemType:
    kind = ProblemType(TYPE_PREFIX + name, status, title, when, detail, **more)
    TYPES[kind.uri] = kind
    return kind


def of_status(status: int) -> ProblemType:
    """``about:blank``: an HTTP error whose status says all there is to say."""
    phrase = HTTPStatus(status).phrase
    return ProblemType("about:blank", status, phrase, "", phrase)


INVALID_SKU = _cause(
    "invalid-sku",
    400,
    "Invalid sku",
    "`POST /allocate` or `POST /holds`: a line names a sku no batch was ever added for "
    "(the book's `Invalid sku ...`). Add a batch of it first.",
    "Invalid sku SMALL-TABLE",
)
TOKEN_MISSING = _cause(
    "token-missing",
    401,
    "Bearer token required",
    "A write without `Authorization: Bearer <token>`, while the service has an "
    "`API_TOKEN` set; or a scrape of `/metrics` without it, with `METRICS_TOKEN` set.",
    "This route needs `Authorization: Bearer <token>`",
    headers=("WWW-Authenticate",),
)
TOKEN_INVALID = _cause(
    "token-invalid",
    401,
    "Bearer token not valid",
    "A write whose bearer token is not the service's `API_TOKEN` (or a scrape of "
    "`/metrics` whose token is not `METRICS_TOKEN`).",
    "The bearer token is not valid",
    headers=("WWW-Authenticate",),
)
UNKNOWN_BATCH = _cause(
    "unknown-batch",
    404,
    "Unknown batch",
    "`GET` or `PATCH /batches/{ref}`: no batch has this reference.",
    "Unknown batch batch-001",
)
NO_ALLOCATIONS = _cause(
    "no-allocations",
    404,
    "No allocations",
    "`GET /allocations/{orderid}`: no line of the order is allocated; the order is "
    "unknown, or every line is out of stock (`GET /orders/{orderid}` tells which).",
    "No allocations for order order-001",
)
NO_ALLOCATION = _cause(
    "no-allocation",
    404,
    "No allocation",
    "`GET /allocations/{orderid}/{sku}`: the order has no allocated line of this sku.",
    "Order order-001 has no allocation of SMALL-TABLE",
)
UNKNOWN_ORDER = _cause(
    "unknown-order",
    404,
    "Unknown order",
    "`GET /orders/{orderid}`: the service never accepted a line of this order.",
    "No order order-001",
)
UNKNOWN_SKU = _cause(
    "unknown-sku",
    404,
    "Unknown sku",
    "`GET /products/{sku}`: no batch of this sku was ever added.",
    "Unknown sku SMALL-TABLE",
)
UNKNOWN_LINE = _cause(
    "unknown-line",
    404,
    "Unknown line",
    "`POST /deallocate`: the service never accepted a line of this sku for this order. "
    "(A line cancelled already is a 202 again.)",
    "Order order-001 has no line of SMALL-TABLE",
)
UNKNOWN_HOLD = _cause(
    "unknown-hold",
    404,
    "Unknown hold",
    "`GET`, `DELETE /holds/{holdid}`, or its `extend` or `confirm`: no hold has this id.",
    "No hold hold-001",
)
NOT_FOUND = _cause(
    "not-found",
    404,
    "No such route",
    "Nothing is served at this path; `/openapi.json` lists what is.",
    "There is no route at this path",
)
METHOD_NOT_ALLOWED = _cause(
    "method-not-allowed",
    405,
    "Method not allowed",
    "The path does not take this method; the `Allow` header lists those it does.",
    "DELETE is not allowed here; the Allow header lists the methods that are",
    headers=("Allow",),
)
BATCH_EXISTS = _cause(
    "batch-exists",
    409,
    "Batch exists with other details",
    "`POST /batches`: the reference is taken by a batch of another sku, quantity or "
    "eta. (An identical batch again is a 201.)",
    "Batch batch-001 already exists with different details",
)
LINE_EXISTS = _cause(
    "line-exists",
    409,
    "Order holds another quantity",
    "`POST /allocate`: the order already holds a different quantity of this sku (the "
    "same line again is a 202); `POST /holds/{holdid}/confirm`: the order already has a "
    "line of a sku the hold keeps (an order has one line of a sku), and nothing changes.",
    "Order order-001 already has 2 of SMALL-TABLE allocated to batch batch-001",
)
HOLD_SHORT = _cause(
    "hold-short",
    409,
    "Not enough stock to hold",
    "`POST /holds`: a line's sku has no batch with that many units free; `short` names "
    "each such sku. Nothing is held, of any line.",
    "Hold hold-001: not enough stock of SMALL-TABLE",
    members={"short": ["SMALL-TABLE"]},
)
HOLD_EXISTS = _cause(
    "hold-exists",
    409,
    "Hold exists with other lines",
    "`POST /holds`: the holdid is taken by a hold of other lines. (The same lines again "
    "are a 201, the same hold.)",
    "Hold hold-001 exists with other lines",
)
HOLD_ENDED = _cause(
    "hold-ended",
    409,
    "Hold no longer held",
    "`POST /holds/{holdid}/extend` or `confirm`: the hold was confirmed (for another "
    "order, to confirm it), released or has expired; its units are free. Place a new hold.",
    "Hold hold-001 is released",
)
WRITE_COLLIDED = _cause(
    "write-collided",
    409,
    "Write kept colliding",
    "The write collided with concurrent writes to the same sku `WRITE_RETRIES` times "
    "and was not done: send it again.",
    "The write collided with concurrent writes; try again",
)
REQUEST_IN_PROGRESS = _cause(
    "request-in-progress",
    409,
    "Request in progress",
    "A request with this `Idempotency-Key` is still running: send it again after the "
    "seconds in `Retry-After` to get its answer.",
    "A request with this Idempotency-Key is still in progress",
    headers=("Retry-After",),
)
BODY_TOO_LARGE = _cause(
    "body-too-large",
    413,
    "Body too large",
    "The request body is larger than `MAX_BODY_BYTES` (64 KiB by default).",
    "The request body is larger than 65536 bytes",
)
NOT_JSON_CONTENT = _cause(
    "unsupported-media-type",
    415,
    "Body must be JSON",
    "A write whose `Content-Type` is missing or is not JSON: send `application/json`.",
    "The request body must be JSON, sent with Content-Type: application/json",
)
VERSION_MISMATCH = _cause(
    "version-mismatch",
    412,
    "Batch changed since",
    "`PATCH /batches/{ref}` with `If-Match`: the batch is no longer at that version "
    "(its `ETag`); nothing changed. Read it again and decide anew.",
    "Batch batch-001 is at version 5, not 4",
)
HEADERS_TOO_LARGE = _cause(
    "headers-too-large",
    431,
    "Headers too large",
    "The request's line and headers are larger than `MAX_HEADER_BYTES` (32 KiB by "
    "default); the connection is closed.",
    "The request's headers are larger than 32768 bytes",
)
INVALID_INPUT = _cause(
    "invalid-input",
    422,
    "Invalid input",
    "A field of the body, an id in the path or a header breaks its rule: `errors` "
    "lists each, with its own message; `detail` names the first.",
    "body.qty: Field required",
    members={"errors": [{"loc": ["body", "qty"], "message": "Field required"}]},
)
INVALID_JSON = _cause(
    "invalid-json",
    422,
    "Body is not JSON",
    "The request body is not valid JSON, or not UTF-8 text.",
    "The request body is not valid JSON (at character 0)",
)
KEY_REUSED = _cause(
    "idempotency-key-reused",
    422,
    "Idempotency-Key reused",
    "The `Idempotency-Key` was used before with another body, or on another route: "
    "a new request needs a new key.",
    (
        "This Idempotency-Key was already used with a different request body; "
        "use a new key for a new request"
    ),
)
INTERNAL_ERROR = _cause(
    "internal-error",
    500,
    "Internal error",
    "A fault of the service, which its log records. A write may have been done or "
    "not; sending it again is safe.",
    "The service failed to answer; the failure is in its log",
)
DATABASE_UNAVAILABLE = _cause(
    "database-unavailable",
    503,
    "Database unavailable",
    "The database cannot be reached: retry after the seconds in `Retry-After`. Every "
    "write is safe to send again.",
    "The database is unavailable; try again shortly",
    headers=("Retry-After",),
)
TOO_MANY_CONNECTIONS = _cause(
    "too-many-connections",
    503,
    "Too many connections",
    "The process has `MAX_CONNECTIONS` open, every one in a request: connect again "
    "shortly. The connection is closed.",
    "Too many connections",
)
NOT_READY = _cause(
    "not-ready",
    503,
    "Not ready",
    "`GET /ready`: a dependency is down; `checks` gives the state of each.",
    "not ready: database unreachable",
    members={
        "checks": {
            "database": "error: ConnectionRefusedError",
            "replica": "off",
            "redis": "off",
            "nats": "off",
        }
    },
)


def body(kind: ProblemType, detail: str, **members: Any) -> dict[str, Any]:
    """The problem's JSON object: what an answer of ``kind`` holds, and its documented example."""
    return {
        "type": kind.uri,
        "title": kind.title,
        "status": kind.status,
        "detail": detail,
        "message": detail,
        **members,
    }


def problem(
    kind: ProblemType,
    detail: str | None = None,
    headers: Mapping[str, str] | None = None,
    **members: Any,
) -> Response:
    """The answer to an error (``kind``'s own ``detail`` unless given): every one is made here."""
    content = orjson.dumps(body(kind, kind.detail if detail is None else detail, **members))
    return Response(content, kind.status, headers, media_type=MEDIA_TYPE)


def example(kind: ProblemType) -> dict[str, Any]:
    """The body of an answer of ``kind``, as /openapi.json shows it."""
    return body(kind, kind.detail, **kind.members)


class Refusal(HTTPException):
    """Raised where an answer cannot be returned (a dependency, the body's reader): ``kind``'s.

    An HTTPException, so that FastAPI passes it on from reading a body too.
    """

    def __init__(
        self, kind: ProblemType, detail: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(kind.status, detail, headers)
        self.kind = kind
