"""Order lines: allocate one, and read where an order's lines went."""

from fastapi import APIRouter, Request, Response

from app import views
from app.domain import commands
from app.entrypoints.http import problems, schemas
from app.entrypoints.http.answers import (
    WRITER,
    After,
    OrderId,
    Sku,
    answer,
    location,
    order_headers_of,
)
from app.entrypoints.http.dependencies import Bus, Once, reads_of
from app.entrypoints.http.idempotency import IdempotencyKey
from app.entrypoints.http.openapi import errors, link, located, operation_id
from app.entrypoints.http.problems import problem

router = APIRouter(generate_unique_id_function=operation_id)

_ORDER = {"orderid": "$request.body#/orderid"}
_SKU = {"sku": "$request.body#/sku"}


@router.post(
    "/allocate",
    status_code=202,
    response_model=schemas.AllocationAccepted,
    dependencies=WRITER,
    summary="Allocate an order line",
    tags=["allocations"],
    responses={
        **errors(problems.INVALID_SKU, problems.LINE_EXISTS, write=True, keyed=True),
        **located(
            202,
            {
                "GetOrder": link("get_order", "Read every line of the order.", _ORDER),
                "GetAllocations": link("get_allocations", "Read where it went.", _ORDER),
                "GetAllocation": link(
                    "get_allocation", "Read where this line went.", {**_ORDER, **_SKU}
                ),
                "GetProduct": link("get_product", "Read the stock of the sku.", _SKU),
            },
            keyed=True,
        ),
    },
)
async def allocate(
    body: schemas.AllocateIn, request: Request, bus: Bus, once: Once, key: IdempotencyKey = None
) -> Response:
    """Allocates the line to a batch of its sku: warehouse stock first, then the shipment
    arriving soonest. Answers 202 with `Location: /orders/{orderid}`, where the line is
    `allocated` to its batch, or `out_of_stock` if no batch has stock for it: accepted,
    but not allocated. (`Link`, `rel="order"`, names the same.)

    Sending the same line again changes nothing; the same order asking for a different
    quantity of the sku is a 409."""

    async def allocate_line() -> Response:
        await bus.handle(commands.Allocate(body.orderid, body.sku, body.qty))
        # The order, not its allocations: it answers 200 for a line out of stock too.
        where = await location(request, "get_order", orderid=body.orderid)
        accepted = schemas.AllocationAccepted(orderid=body.orderid)
        return answer(request, accepted, order_headers_of(where))

    return await once(key, request, body, allocate_line, headers_of=order_headers_of)


@router.get(
    "/allocations/{orderid}",
    response_model=list[schemas.Allocation],
    summary="Read where an order's lines are allocated",
    tags=["allocations"],
    responses=errors(problems.NO_ALLOCATIONS),
)
async def get_allocations(orderid: OrderId, request: Request, after: After = None) -> Response:
    """The batch each line of the order is allocated to, from the allocations read model:
    the book's read. An order with no line allocated is a 404 here; `GET /orders/{orderid}`
    tells an order out of stock from one never seen."""
    result = await views.allocations(reads_of(request), orderid, after)
    if not result:
        return problem(problems.NO_ALLOCATIONS, f"No allocations for order {orderid}")
    return answer(request, result)


@router.get(
    "/orders/{orderid}",
    response_model=schemas.Order,
    summary="Read an order: each line allocated, or out of stock",
    tags=["allocations"],
    responses=errors(problems.UNKNOWN_ORDER),
)
async def get_order(orderid: OrderId, request: Request, after: After = None) -> Response:
    """Each line `POST /allocate` accepted for the order: `allocated` (with its batch), or
    `out_of_stock` when no batch could take it. Unlike `GET /allocations/{orderid}`, an
    order whose every line is out of stock is a 200 here, and only an order never seen is
    a 404. `POST /allocate` points its `Location` here."""
    result = await views.order(reads_of(request), orderid, after)
    if result is None:
        return problem(problems.UNKNOWN_ORDER, f"No order {orderid}")
    return answer(request, result)


@router.get(
    "/allocations/{orderid}/{sku}",
    response_model=schemas.Allocation,
    summary="Read where one line of an order is allocated",
    tags=["allocations"],
    responses=errors(problems.NO_ALLOCATION),
)
async def get_allocation(
    orderid: OrderId, sku: Sku, request: Request, after: After = None
) -> Response:
    """The batch the order's line of `sku` is allocated to, from the allocations read
    model."""
    result = await views.allocation(reads_of(request), orderid, sku, after)
    if result is None:
        return problem(problems.NO_ALLOCATION, f"Order {orderid} has no allocation of {sku}")
    return answer(request, result)
