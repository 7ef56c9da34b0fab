"""Batches: stock of one sku, in the warehouse or arriving on a date."""

from typing import Any

from fastapi import APIRouter, Request, Response

from app import views
from app.domain import commands
from app.entrypoints.http import problems, schemas
from app.entrypoints.http.answers import (
    WRITER,
    After,
    BatchRef,
    answer,
    headers_of,
    location,
)
from app.entrypoints.http.dependencies import Bus, Once, reads_of
from app.entrypoints.http.idempotency import IdempotencyKey
from app.entrypoints.http.openapi import errors, link, located, operation_id
from app.entrypoints.http.problems import problem

router = APIRouter(generate_unique_id_function=operation_id)

_REF, _SKU = {"ref": "$request.body#/ref"}, {"sku": "$request.body#/sku"}
_ADD_BATCH: dict[str, Any] = {
    "status_code": 201,
    "response_model": schemas.BatchCreated,
    "dependencies": WRITER,
    "tags": ["batches"],
    "responses": {
        **errors(problems.BATCH_EXISTS, write=True, keyed=True),
        **located(
            201,
            {
                "GetBatch": link("get_batch", "Read the batch just added.", _REF),
                "ChangeBatch": link("change_batch", "Change its quantity.", _REF),
                "GetProduct": link("get_product", "Read the stock of its sku.", _SKU),
                "Allocate": link(
                    "allocate",
                    "Allocate an order line of all of it.",
                    body={**_SKU, "qty": "$request.body#/qty"},
                ),
            },
            keyed=True,
        ),
    },
}


@router.post("/batches", summary="Add a batch of stock", **_ADD_BATCH)
async def create_batch(
    body: schemas.BatchIn, request: Request, bus: Bus, once: Once, key: IdempotencyKey = None
) -> Response:
    """Adds `qty` units of `sku`: stock in the warehouse when `eta` is null, a shipment
    arriving on `eta` otherwise. Answers 201 with `Location: /batches/{ref}`, where the
    batch can be read at once.

    Adding an identical batch again changes nothing and answers 201 again; a reference
    already used with another sku, quantity or eta is a 409."""

    async def create() -> Response:
        await bus.handle(commands.CreateBatch(body.ref, body.sku, body.qty, body.eta))
        where = await location(request, "get_batch", ref=body.ref)
        return answer(request, schemas.BatchCreated(ref=body.ref), headers_of(where))

    return await once(key, request, body, create, headers_of=headers_of)


# The book's path for the same operation.
router.add_api_route(
    "/add_batch",
    create_batch,
    methods=["POST"],
    name="add_batch",
    summary="Add a batch of stock (the book's route)",
    description="The book's name for `POST /batches`, the same in every way.",
    **_ADD_BATCH,
)


@router.get(
    "/batches/{ref}",
    response_model=schemas.BatchOut,
    summary="Read a batch's quantities",
    tags=["batches"],
    responses=errors(problems.UNKNOWN_BATCH),
)
async def get_batch(ref: BatchRef, request: Request, after: After = None) -> Response:
    """How many units were `purchased`, how many are `allocated` to order lines, and how
    many are still `available`. Served from the batches read model."""
    batch = await views.batch(reads_of(request), ref, after)
    if batch is None:
        return problem(problems.UNKNOWN_BATCH, f"Unknown batch {ref}")
    return answer(request, batch)


@router.patch(
    "/batches/{ref}",
    status_code=202,
    response_model=schemas.BatchAccepted,
    dependencies=WRITER,
    summary="Change a batch's purchased quantity",
    tags=["batches"],
    responses={
        **errors(problems.UNKNOWN_BATCH, write=True),
        **located(
            202, {"GetBatch": link("get_batch", "Read it now.", {"ref": "$request.path.ref"})}
        ),
    },
)
async def change_batch(
    ref: BatchRef, body: schemas.QuantityIn, request: Request, bus: Bus
) -> Response:
    """Sets how many units the batch holds, as when a shipment arrives short. Order lines
    that no longer fit are deallocated and allocated again to other batches of the sku
    where stock allows; lines no batch can take lose their allocation. Answers 202 with
    `Location: /batches/{ref}`."""
    await bus.handle(commands.ChangeBatchQuantity(ref, body.qty))
    where = await location(request, "get_batch", ref=ref)
    return answer(request, schemas.BatchAccepted(ref=ref), headers_of(where))
