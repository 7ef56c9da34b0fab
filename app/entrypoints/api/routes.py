"""HTTP routes: translate a request into a command or a view query, nothing more."""

from typing import Annotated, Any
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from pydantic import AfterValidator, BaseModel, WithJsonSchema
from pydantic.config import JsonDict

from app import views
from app.adapters.read_source import CONSISTENCY_TOKEN, POSITION
from app.domain import commands
from app.entrypoints import fields
from app.entrypoints.api import openapi, problems, schemas
from app.entrypoints.api.dependencies import Bus, Once, reads_of
from app.entrypoints.api.idempotency import IdempotencyKey
from app.entrypoints.api.json_bodies import JsonBodyRoute
from app.entrypoints.api.problems import problem
from app.entrypoints.api.security import bearer

router = APIRouter(generate_unique_id_function=openapi.operation_id, route_class=JsonBodyRoute)

# With API_TOKEN set, writes need it: checked before the body is read
# (app.entrypoints.api.security); declared here for /openapi.json.
WRITER = [Depends(bearer)]


def _body(examples: dict[str, JsonDict]) -> Any:
    # "Try it out" in /docs fills in the first example.
    return Body(openapi_examples={name: {"value": value} for name, value in examples.items()})


def _identifier(description: str, example: str) -> Any:
    return Path(
        min_length=1,
        max_length=fields.MAX_ID_LENGTH,
        description=f"{description} {fields.ID_RULES}",
        json_schema_extra={"pattern": fields.ID_PATTERN},
        openapi_examples={example: {"value": example}},
    )


NewBatch = Annotated[
    schemas.BatchIn,
    _body(
        {
            "in the warehouse": schemas.BATCH_EXAMPLE,
            "arriving in a shipment": schemas.SHIPMENT_EXAMPLE,
        }
    ),
]
NewLine = Annotated[schemas.AllocateIn, _body({"two tables": schemas.LINE_EXAMPLE})]
NewQuantity = Annotated[schemas.QuantityIn, _body({"ten units": schemas.QUANTITY_EXAMPLE})]
Printable = AfterValidator(fields.printable)
BatchRef = Annotated[str, _identifier("The batch's reference.", "batch-001"), Printable]
OrderId = Annotated[str, _identifier("The order's id.", "order-001"), Printable]
After = Annotated[
    str | None,
    Query(
        pattern=f"^{POSITION.pattern}$",
        description="A write's position, from its `Location` or its "
        f"`{CONSISTENCY_TOKEN}` header: the answer includes that write. Without it, "
        "a read is as fresh as the database it is served from (docs/scaling.md).",
        # No example: "Try it out" would fill it in, and send it, for every read.
    ),
    # Optional as a parameter, a string when given: not "string or null".
    WithJsonSchema({"type": "string", "pattern": f"^{POSITION.pattern}$"}),
]
Sku = Annotated[str, _identifier("The product's sku.", "SMALL-TABLE"), Printable]


def _answer(request: Request, body: Any, headers: dict[str, str] | None = None) -> Response:
    """Every answer but an error's: JSON, with the status its route declares.

    A write's body is its route's response model; a read's is the plain,
    already-valid data of its view, which the model describes: orjson writes
    it several times faster than validating it again would.
    """
    content = body.model_dump_json() if isinstance(body, BaseModel) else orjson.dumps(body)
    status_code: int = request.scope["route"].status_code or 200
    return Response(content, status_code, headers, media_type="application/json")


def _located(location: str, position: str | None) -> dict[str, str]:
    return _headers_of(_positioned(location, position))


def _positioned(location: str, position: str | None) -> str:
    # With one database every read sees every write: no position to give.
    return location if position is None else f"{location}?after={position}"


def _headers_of(location: str) -> dict[str, str]:
    """A write's headers, all read from its ``Location``, as a replayed answer gets them too."""
    _, _, position = location.partition("?after=")  # ids in the path are quoted: no "?" there
    return (
        {"Location": location, CONSISTENCY_TOKEN: position} if position else {"Location": location}
    )


def _order_headers_of(location: str) -> dict[str, str]:
    # The Link of before the Location named the order, kept for those who follow it.
    return {**_headers_of(location), "Link": f'<{location}>; rel="order"'}


def _location(request: Request, name: str, **params: str) -> str:
    # Ids may hold "?", "#", "%" or non-ASCII letters: each is quoted as one path segment.
    quoted = {key: quote(value, safe="") for key, value in params.items()}
    root_path: str = request.scope.get("root_path", "")
    return root_path + str(request.app.url_path_for(name, **quoted))


# POST /batches, and the book's POST /add_batch: one operation under two paths.
_ADD_BATCH: dict[str, Any] = {
    "status_code": 201,
    "response_model": schemas.BatchCreated,
    "dependencies": WRITER,
}


@router.post("/batches", **_ADD_BATCH, **openapi.ADD_BATCH)
async def add_batch(
    body: NewBatch,
    request: Request,
    bus: Bus,
    once: Once,
    key: IdempotencyKey = None,
) -> Response:
    async def create() -> Response:
        await bus.handle(commands.CreateBatch(body.ref, body.sku, body.qty, body.eta))
        location = _location(request, "get_batch", ref=body.ref)
        position = await reads_of(request).position()
        return _answer(request, schemas.BatchCreated(ref=body.ref), _located(location, position))

    return await once(key, request, body, create, headers_of=_headers_of)


# The book's path for the same operation.
router.add_api_route(
    "/add_batch",
    add_batch,
    methods=["POST"],
    name="add_batch_book",
    **_ADD_BATCH,
    **openapi.ADD_BATCH_BOOK,
)


@router.get("/batches/{ref}", response_model=schemas.BatchOut, **openapi.GET_BATCH)
async def get_batch(ref: BatchRef, request: Request, after: After = None) -> Response:
    batch = await views.batch(reads_of(request), ref, after)
    if batch is None:
        return problem(problems.UNKNOWN_BATCH, f"Unknown batch {ref}")
    return _answer(request, batch)


@router.patch(
    "/batches/{ref}",
    status_code=202,
    response_model=schemas.BatchAccepted,
    dependencies=WRITER,
    **openapi.CHANGE_BATCH_QUANTITY,
)
async def change_batch_quantity(
    ref: BatchRef, body: NewQuantity, request: Request, bus: Bus
) -> Response:
    await bus.handle(commands.ChangeBatchQuantity(ref, body.qty))
    location = _location(request, "get_batch", ref=ref)
    position = await reads_of(request).position()
    return _answer(request, schemas.BatchAccepted(ref=ref), _located(location, position))


@router.post(
    "/allocate",
    status_code=202,
    response_model=schemas.AllocationAccepted,
    dependencies=WRITER,
    **openapi.ALLOCATE,
)
async def allocate(
    body: NewLine,
    request: Request,
    bus: Bus,
    once: Once,
    key: IdempotencyKey = None,
) -> Response:
    async def allocate_line() -> Response:
        await bus.handle(commands.Allocate(body.orderid, body.sku, body.qty))
        # The order, not its allocations: it answers 200 for a line out of stock too.
        location = _location(request, "get_order", orderid=body.orderid)
        position = await reads_of(request).position()
        headers = _order_headers_of(_positioned(location, position))
        return _answer(request, schemas.AllocationAccepted(orderid=body.orderid), headers)

    return await once(key, request, body, allocate_line, headers_of=_order_headers_of)


@router.get(
    "/allocations/{orderid}",
    response_model=list[schemas.Allocation],
    **openapi.GET_ALLOCATIONS,
)
async def get_allocations(orderid: OrderId, request: Request, after: After = None) -> Response:
    result = await views.allocations(reads_of(request), orderid, after)
    if not result:
        return problem(problems.NO_ALLOCATIONS, f"No allocations for order {orderid}")
    return _answer(request, result)


@router.get("/orders/{orderid}", response_model=schemas.Order, **openapi.GET_ORDER)
async def get_order(orderid: OrderId, request: Request, after: After = None) -> Response:
    result = await views.order(reads_of(request), orderid, after)
    if result is None:
        return problem(problems.UNKNOWN_ORDER, f"No order {orderid}")
    return _answer(request, result)


@router.get(
    "/allocations/{orderid}/{sku}",
    response_model=schemas.Allocation,
    **openapi.GET_ALLOCATION,
)
async def get_allocation(
    orderid: OrderId, sku: Sku, request: Request, after: After = None
) -> Response:
    result = await views.allocation(reads_of(request), orderid, sku, after)
    if result is None:
        return problem(problems.NO_ALLOCATION, f"Order {orderid} has no allocation of {sku}")
    return _answer(request, result)


@router.get("/products/{sku}", response_model=schemas.ProductOut, **openapi.GET_PRODUCT)
async def get_product(sku: Sku, request: Request, after: After = None) -> Response:
    result = await views.product(reads_of(request), sku, after)
    if result is None:
        return problem(problems.UNKNOWN_SKU, f"Unknown sku {sku}")
    return _answer(request, result)
