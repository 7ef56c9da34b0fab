"""Holds: stock kept for a checkout, every line or none, until confirmed, released or expired.

The holdid is the caller's: placing, confirming and releasing a hold again
changes nothing, so these writes need no Idempotency-Key.
"""

from fastapi import APIRouter, Request, Response

from app import views
from app.domain import commands
from app.entrypoints.http import problems, schemas
from app.entrypoints.http.answers import (
    WRITER,
    After,
    HoldId,
    answer,
    headers_of,
    location,
    order_headers_of,
)
from app.entrypoints.http.dependencies import Bus, reads_of
from app.entrypoints.http.openapi import errors, link, located, operation_id
from app.entrypoints.http.problems import problem

# In the order /docs lists them, which "Try it out" takes top to bottom: place, extend,
# confirm, read, release.
router = APIRouter(generate_unique_id_function=operation_id)

_HOLD = {"holdid": "$request.path.holdid"}
_READ = {"GetHold": link("get_hold", "Read the hold.", _HOLD)}


async def _answer(request: Request, holdid: str) -> Response:
    """The hold as it is after the write, read where the write can be seen."""
    where = await location(request, "get_hold", holdid=holdid)
    hold = await views.hold(reads_of(request), holdid, where.partition("?after=")[2] or None)
    return answer(request, hold, headers_of(where))


@router.post(
    "/holds",
    status_code=201,
    response_model=schemas.Hold,
    dependencies=WRITER,
    summary="Hold stock for a checkout",
    tags=["holds"],
    responses={
        **errors(problems.INVALID_SKU, problems.HOLD_SHORT, problems.HOLD_EXISTS, write=True),
        **located(
            201, {"GetHold": link("get_hold", "Read it.", {"holdid": "$request.body#/holdid"})}
        ),
    },
)
async def place_hold(body: schemas.HoldIn, request: Request, bus: Bus) -> Response:
    """Keeps every line's units for `ttl_s` seconds, each in the batch an allocation would
    take, out of reach of allocations and other holds; or, if any line cannot be kept in
    full, none (a 409 naming the skus `short`). Answers 201 with the hold and `Location:
    /holds/{holdid}`. Unconfirmed, it expires by itself at `expires_at`, its units free
    again within about a second. The same `holdid` with the same lines again answers 201,
    the same hold; with other lines, 409."""
    await bus.handle(commands.PlaceHold(body.holdid, body.units(), body.ttl_s))
    return await _answer(request, body.holdid)


@router.post(
    "/holds/{holdid}/extend",
    response_model=schemas.Hold,
    dependencies=WRITER,
    summary="Extend a hold",
    tags=["holds"],
    responses={
        **errors(problems.UNKNOWN_HOLD, problems.HOLD_ENDED, write=True),
        **located(200, _READ),
    },
)
async def extend_hold(
    holdid: HoldId, body: schemas.HoldTime, request: Request, bus: Bus
) -> Response:
    """Makes the hold last `ttl_s` seconds from now (while a payment takes its time, say);
    answers the hold with its new `expires_at`. A hold no longer held is a 409."""
    await bus.handle(commands.ExtendHold(holdid, body.ttl_s))
    return await _answer(request, holdid)


@router.post(
    "/holds/{holdid}/confirm",
    status_code=202,
    response_model=schemas.AllocationAccepted,
    dependencies=WRITER,
    summary="Confirm a hold into an order",
    tags=["holds"],
    responses={
        **errors(problems.UNKNOWN_HOLD, problems.HOLD_ENDED, problems.LINE_EXISTS, write=True),
        **located(
            202,
            {
                "GetOrder": link(
                    "get_order", "Read the order.", {"orderid": "$request.body#/orderid"}
                ),
                **_READ,
            },
        ),
    },
)
async def confirm_hold(
    holdid: HoldId, body: schemas.HoldConfirm, request: Request, bus: Bus
) -> Response:
    """Each held line becomes a line of order `orderid`, allocated in the batch that kept
    it; the hold is `confirmed`. Answers 202 with `Location: /orders/{orderid}`. Again for
    the same order: 202, nothing changes. A hold expired, released, or confirmed for
    another order is a 409."""
    await bus.handle(commands.ConfirmHold(holdid, body.orderid))
    where = await location(request, "get_order", orderid=body.orderid)
    return answer(
        request, schemas.AllocationAccepted(orderid=body.orderid), order_headers_of(where)
    )


@router.get(
    "/holds/{holdid}",
    response_model=schemas.Hold,
    summary="Read a hold",
    tags=["holds"],
    responses=errors(problems.UNKNOWN_HOLD),
)
async def get_hold(holdid: HoldId, request: Request, after: After = None) -> Response:
    """The hold's state (`held`, `confirmed`, `released`, `expired`), when it expires, and
    the batch keeping each line."""
    result = await views.hold(reads_of(request), holdid, after)
    if result is None:
        return problem(problems.UNKNOWN_HOLD, f"No hold {holdid}")
    return answer(request, result)


@router.delete(
    "/holds/{holdid}",
    status_code=204,
    dependencies=WRITER,
    summary="Release a hold",
    tags=["holds"],
    # A write without a body: none of the body's causes but its size.
    responses=errors(
        problems.UNKNOWN_HOLD,
        problems.TOKEN_MISSING,
        problems.TOKEN_INVALID,
        problems.BODY_TOO_LARGE,
        problems.WRITE_COLLIDED,
    ),
)
async def release_hold(holdid: HoldId, bus: Bus) -> Response:
    """Frees the hold's units at once; it reads `released`. Again, or on a hold that has
    ended: 204, nothing changes."""
    await bus.handle(commands.ReleaseHold(holdid))
    return Response(status_code=204)
