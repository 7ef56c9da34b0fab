"""Order lines: allocate one, and read where an order's lines went."""

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from app import views
from app.domain import commands
from app.entrypoints.http import problems, schemas
from app.entrypoints.http.answers import (
    ID_CURSOR,
    WRITER,
    After,
    HistoryCursor,
    Limit,
    OptionalSku,
    OrderId,
    Sku,
    answer,
    cursor,
    location,
    order_headers_of,
    page,
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
    "/orders",
    response_model=schemas.LinePage,
    summary="List the lines accepted, a page at a time",
    tags=["allocations"],
    responses=errors(),
)
async def list_orders(
    request: Request,
    sku: OptionalSku = None,
    state: Annotated[schemas.LineState | None, Query(description="Only those in it.")] = None,
    limit: Limit = 100,
    after: Annotated[
        str | None, cursor("`orderid/sku` of the last line of the page before.", ID_CURSOR)
    ] = None,
) -> Response:
    """Every line the service accepted, by order and then sku, with its state; of `sku`; in
    `state`. `next` is the next page, and `Link: <next>; rel="next"` names it too: paging
    through never repeats or misses a line that was there before the first page, however
    many are added meanwhile."""
    orderid, _, sku_after = (after or "").partition("/")
    key = None if after is None else (orderid, sku_after)
    items, last = await views.order_lines(reads_of(request), limit, key, sku, state)
    return page(request, items, None if last is None else "/".join(last))


@router.get(
    "/orders/{orderid}/history",
    response_model=schemas.HistoryPage,
    summary="Read what became of an order's lines, change by change",
    tags=["allocations"],
    responses=errors(problems.UNKNOWN_ORDER),
)
async def get_order_history(
    orderid: OrderId, request: Request, limit: Limit = 100, after: HistoryCursor = None
) -> Response:
    """The stock ledger's entries of the order, oldest first: each allocation, refusal,
    cancellation, each time a line lost its batch and was placed again, with the request
    (`request_id`, its `X-Request-ID`) and the `Idempotency-Key` that made it. A page at a
    time: `next` (and `Link: <next>; rel="next"`)."""
    items, last = await views.history(
        reads_of(request), limit, None if after is None else int(after), orderid=orderid
    )
    if not items and after is None:
        return problem(problems.UNKNOWN_ORDER, f"No order {orderid}")
    return page(request, items, None if last is None else str(last))


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


# Last in /docs: "Try it out" runs the section top to bottom, the reads before a cancel.
@router.post(
    "/deallocate",
    status_code=202,
    response_model=schemas.AllocationAccepted,
    dependencies=WRITER,
    summary="Cancel an order line",
    tags=["allocations"],
    responses={
        **errors(problems.UNKNOWN_LINE, write=True, keyed=True),
        **located(
            202,
            {
                "GetOrder": link("get_order", "Read the order: the line cancelled.", _ORDER),
                "GetOrderHistory": link("get_order_history", "Read what it went through.", _ORDER),
            },
            keyed=True,
        ),
    },
)
async def deallocate(
    body: schemas.LineIn, request: Request, bus: Bus, once: Once, key: IdempotencyKey = None
) -> Response:
    """Cancels the order's line of `sku`: its units go back to its batch, and the order reads
    it `cancelled`; `GET /allocations/{orderid}` no longer lists it. A line out of stock is
    cancelled too, giving back nothing. Answers 202 with `Location: /orders/{orderid}`.
    Cancelling it again changes nothing and answers 202; a line the service never accepted
    is a 404. Allocating the same line afterwards places it anew."""

    async def cancel() -> Response:
        await bus.handle(commands.Deallocate(body.orderid, body.sku))
        where = await location(request, "get_order", orderid=body.orderid)
        accepted = schemas.AllocationAccepted(orderid=body.orderid)
        return answer(request, accepted, order_headers_of(where))

    return await once(key, request, body, cancel, headers_of=order_headers_of)
