"""HTTP routes: translate a request into a command or a view query, nothing more."""

from typing import Annotated, Any
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response, status
from pydantic import AfterValidator, BaseModel, WithJsonSchema
from pydantic.config import JsonDict

from app import views
from app.adapters.read_source import CONSISTENCY_TOKEN, POSITION, ReadSource
from app.domain import commands
from app.entrypoints import fields
from app.entrypoints.api import schemas
from app.entrypoints.api.dependencies import Bus, Once
from app.entrypoints.api.errors import COLLIDED, error
from app.entrypoints.api.idempotency import IdempotencyKey
from app.entrypoints.api.openapi import (
    AFTER_ALLOCATION,
    AFTER_BATCH_ADDED,
    AFTER_BATCH_CHANGED,
    error_responses,
    idempotent,
    located,
    operation_id,
    said,
    write_errors,
)
from app.entrypoints.api.security import require_writer

router = APIRouter(generate_unique_id_function=operation_id)

WRITER = [Depends(require_writer)]  # with API_TOKEN set, writes need it


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
        openapi_examples={"a write's position": {"value": "0/16B3748"}},
    ),
    # Optional as a parameter, a string when given: not "string or null".
    WithJsonSchema({"type": "string", "pattern": f"^{POSITION.pattern}$"}),
]
Sku = Annotated[str, _identifier("The product's sku.", "SMALL-TABLE"), Printable]


def _json(body: Any) -> Response:
    # Reads skip the response model: views return plain, already-valid data,
    # and orjson writes it several times faster than validating it again.
    return Response(orjson.dumps(body), media_type="application/json")


def _written(status_code: int, body: BaseModel, location: str, position: str | None) -> Response:
    return Response(
        body.model_dump_json(),
        status_code=status_code,
        media_type="application/json",
        headers=_located(location, position),
    )


def _located(location: str, position: str | None) -> dict[str, str]:
    if position is None:  # one database: every read sees every write
        return {"Location": location}
    return {"Location": f"{location}?after={position}", CONSISTENCY_TOKEN: position}


def _location(request: Request, name: str, **params: str) -> str:
    # Ids may hold "?", "#", "%" or non-ASCII letters: each is quoted as one path segment.
    quoted = {key: quote(value, safe="") for key, value in params.items()}
    root_path: str = request.scope.get("root_path", "")
    return root_path + str(request.app.url_path_for(name, **quoted))


def _reads(request: Request) -> ReadSource:
    reads: ReadSource = request.app.state.reads
    return reads


ADD_BATCH = (
    "Adds `qty` units of `sku`: stock in the warehouse when `eta` is null, a shipment "
    "arriving on `eta` otherwise. Answers 201 with `Location: /batches/{ref}`, where "
    "the batch can be read at once.\n\n"
    "Adding an identical batch again changes nothing and answers 201 again; a reference "
    "already used with another sku, quantity or eta is a 409."
)
BATCH_ERRORS = write_errors(
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
BATCH_CREATED = located(201, "the batch, `/batches/{ref}`", AFTER_BATCH_ADDED)


# POST /batches, and the book's POST /add_batch: one operation under two paths.
ADD_BATCH_ROUTE: dict[str, Any] = {
    "dependencies": WRITER,
    "status_code": status.HTTP_201_CREATED,
    "response_model": schemas.BatchCreated,
    "response_description": "Created: read the batch at `Location`.",
    "responses": idempotent({**BATCH_CREATED, **BATCH_ERRORS}),
    "tags": ["batches"],
}


@router.post("/batches", summary="Add a batch of stock", description=ADD_BATCH, **ADD_BATCH_ROUTE)
async def add_batch(
    body: NewBatch, request: Request, bus: Bus, once: Once, key: IdempotencyKey = None
) -> Response:
    async def create() -> Response:
        await bus.handle(commands.CreateBatch(body.ref, body.sku, body.qty, body.eta))
        location = _location(request, "get_batch", ref=body.ref)
        position = await _reads(request).position()
        return _written(201, schemas.BatchCreated(ref=body.ref), location, position)

    return await once(key, request, body, create)


router.add_api_route(
    "/add_batch",
    add_batch,
    methods=["POST"],
    name="add_batch_book",
    summary="Add a batch of stock (the book's route)",
    description="The book's name for `POST /batches`, and the same in every way.\n\n" + ADD_BATCH,
    **ADD_BATCH_ROUTE,
)


@router.get(
    "/batches/{ref}",
    response_model=schemas.BatchOut,
    response_description="The batch.",
    responses=error_responses(
        {404: ("No batch has this reference.", said(unknown_batch="Unknown batch batch-001"))},
        name="ref",
    ),
    tags=["batches"],
    summary="Read a batch's quantities",
    description="How many units were `purchased`, how many are `allocated` to order "
    "lines, and how many are still `available`. Served from the batches read model.",
)
async def get_batch(ref: BatchRef, request: Request, after: After = None) -> Response:
    batch = await views.batch(_reads(request), ref, after)
    if batch is None:
        return error(404, f"Unknown batch {ref}")
    return _json(batch)


@router.patch(
    "/batches/{ref}",
    dependencies=WRITER,
    status_code=status.HTTP_202_ACCEPTED,
    response_model=schemas.BatchAccepted,
    response_description="Accepted: read the batch at `Location`.",
    responses={
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
    tags=["batches"],
    summary="Change a batch's purchased quantity",
    description="Sets how many units the batch holds, as when a shipment arrives short. "
    "Order lines that no longer fit are deallocated and allocated again to other batches "
    "of the sku where stock allows; lines no batch can take lose their allocation. "
    "Answers 202 with `Location: /batches/{ref}`.",
)
async def change_batch_quantity(
    ref: BatchRef, body: NewQuantity, request: Request, response: Response, bus: Bus
) -> schemas.BatchAccepted:
    await bus.handle(commands.ChangeBatchQuantity(ref, body.qty))
    location = _location(request, "get_batch", ref=ref)
    response.headers.update(_located(location, await _reads(request).position()))
    return schemas.BatchAccepted(ref=ref)


@router.post(
    "/allocate",
    dependencies=WRITER,
    status_code=status.HTTP_202_ACCEPTED,
    response_model=schemas.AllocationAccepted,
    response_description="Accepted: read the order's allocations at `Location`.",
    responses=idempotent(
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
    tags=["allocations"],
    summary="Allocate an order line",
    description="Allocates the line to a batch of its sku: warehouse stock first, then "
    "the shipment arriving soonest. Answers 202 with `Location: /allocations/{orderid}`; "
    "read the allocation there. A line no batch has stock for is accepted but is not "
    "allocated: it is missing there, and `GET /orders/{orderid}` (the `Link` header, "
    '`rel="order"`) says it is out of stock.\n\n'
    "Sending the same line again changes nothing; the same order asking for a different "
    "quantity of the sku is a 409.",
)
async def allocate(
    body: NewLine, request: Request, bus: Bus, once: Once, key: IdempotencyKey = None
) -> Response:
    async def allocate_line() -> Response:
        await bus.handle(commands.Allocate(body.orderid, body.sku, body.qty))
        location = _location(request, "get_allocations", orderid=body.orderid)
        position = await _reads(request).position()
        answer = _written(202, schemas.AllocationAccepted(orderid=body.orderid), location, position)
        # Where to tell an out-of-stock line from an unknown order.
        order = _location(request, "get_order", orderid=body.orderid)
        order += f"?after={position}" if position else ""
        answer.headers["Link"] = f'<{order}>; rel="order"'
        return answer

    return await once(key, request, body, allocate_line)


@router.get(
    "/allocations/{orderid}",
    response_model=list[schemas.Allocation],
    response_description="One entry per allocated line: its sku and the batch it is in.",
    responses=error_responses(
        {
            404: (
                "The order has no allocated lines: unknown, or every line out of stock.",
                said(no_allocations="No allocations for order order-001"),
            )
        },
        name="orderid",
    ),
    tags=["allocations"],
    summary="Read where an order's lines are allocated",
    description="The batch each line of the order is allocated to, from the allocations "
    "read model. This is where `POST /allocate` points its `Location`.",
)
async def get_allocations(orderid: OrderId, request: Request, after: After = None) -> Response:
    result = await views.allocations(_reads(request), orderid, after)
    if not result:
        return error(404, f"No allocations for order {orderid}")
    return _json(result)


@router.get(
    "/orders/{orderid}",
    response_model=schemas.Order,
    response_description="Every line of the order the service accepted, and its state.",
    responses=error_responses(
        {
            404: (
                "The service never accepted a line of this order.",
                said(unknown_order="No order order-001"),
            )
        },
        name="orderid",
    ),
    tags=["allocations"],
    summary="Read an order: each line allocated, or out of stock",
    description="Each line `POST /allocate` accepted for the order: `allocated` (with its "
    "batch), or `out_of_stock` when no batch could take it. Unlike "
    "`GET /allocations/{orderid}`, an order whose every line is out of stock is a 200 "
    "here, and only an order never seen is a 404. `POST /allocate` links here.",
)
async def get_order(orderid: OrderId, request: Request, after: After = None) -> Response:
    result = await views.order(_reads(request), orderid, after)
    if result is None:
        return error(404, f"No order {orderid}")
    return _json(result)


@router.get(
    "/allocations/{orderid}/{sku}",
    response_model=schemas.Allocation,
    response_description="The sku and the batch the line is in.",
    responses=error_responses(
        {
            404: (
                "The order has no allocated line of this sku.",
                said(no_allocation="Order order-001 has no allocation of SMALL-TABLE"),
            )
        },
        name="orderid",
    ),
    tags=["allocations"],
    summary="Read where one line of an order is allocated",
    description="The batch the order's line of `sku` is allocated to, from the "
    "allocations read model.",
)
async def get_allocation(
    orderid: OrderId, sku: Sku, request: Request, after: After = None
) -> Response:
    result = await views.allocation(_reads(request), orderid, sku, after)
    if result is None:
        return error(404, f"Order {orderid} has no allocation of {sku}")
    return _json(result)


@router.get(
    "/products/{sku}",
    response_model=schemas.ProductOut,
    response_description="The sku's stock, and each batch in the order allocation uses them.",
    responses=error_responses(
        {
            404: (
                "No batch of this sku was ever added.",
                said(unknown_sku="Unknown sku SMALL-TABLE"),
            )
        },
        name="sku",
    ),
    tags=["products"],
    summary="Read the stock of a sku, now and per batch",
    description="Units available in the warehouse now, units arriving in shipments, and "
    "what each batch has left. Served from the batches read model, which events keep "
    "up to date.",
)
async def get_product(sku: Sku, request: Request, after: After = None) -> Response:
    result = await views.product(_reads(request), sku, after)
    if result is None:
        return error(404, f"Unknown sku {sku}")
    return _json(result)
