"""Batches: stock of one sku, in the warehouse or arriving on a date."""

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import AfterValidator, BeforeValidator, WithJsonSchema

from app import views, wire
from app.domain import commands
from app.entrypoints.http import problems, schemas
from app.entrypoints.http.answers import (
    ID_CURSOR,
    WRITER,
    After,
    BatchRef,
    Limit,
    OptionalSku,
    answer,
    cursor,
    headers_of,
    location,
    page,
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
    "/batches",
    response_model=schemas.BatchPage,
    summary="List batches, a page at a time",
    tags=["batches"],
    responses=errors(),
)
async def list_batches(
    request: Request,
    sku: OptionalSku = None,
    eta_before: Annotated[
        date | None,
        Query(description="Only those here now, or arriving before this day, `YYYY-MM-DD`."),
        BeforeValidator(wire.iso_date),
        AfterValidator(wire.eta_in_range),
        WithJsonSchema({"type": "string", "format": "date", "pattern": wire.ETA_PATTERN}),
    ] = None,
    limit: Limit = 100,
    after: Annotated[
        str | None, cursor("the reference of the last batch of the page before.", ID_CURSOR)
    ] = None,
) -> Response:
    """Batches by reference, each as `GET /batches/{ref}` reads it; of `sku`; or arriving
    before `eta_before` (stock in the warehouse, no eta, included). `next` is the next page,
    and `Link: <next>; rel="next"` names it too: paging through never repeats or misses a
    batch that was there before the first page, however many are added meanwhile."""
    items, last = await views.batches(reads_of(request), limit, after, sku, eta_before)
    return page(request, items, last)


_ETAG = {"ETag": {"description": 'The batch\'s version, `"4"`: `If-Match` takes it.'}}


@router.get(
    "/batches/{ref}",
    response_model=schemas.BatchOut,
    summary="Read a batch's quantities",
    tags=["batches"],
    responses={200: {"headers": _ETAG}, **errors(problems.UNKNOWN_BATCH)},
)
async def get_batch(ref: BatchRef, request: Request, after: After = None) -> Response:
    """How many units were `purchased`, how many are `allocated` to order lines, and how
    many are still `available`. Its `ETag` is its version, which changes with its
    quantity, eta or allocations (`If-Match` takes it). Served from the batches read
    model."""
    found = await views.versioned_batch(reads_of(request), ref, after)
    if found is None:
        return problem(problems.UNKNOWN_BATCH, f"Unknown batch {ref}")
    batch, version = found
    return answer(request, batch, {"ETag": f'"{version}"'})


def _versions(if_match: str | None) -> frozenset[int] | None:
    """The versions an If-Match names (``"4"``, ``W/"4"``, a list); None for none or ``*``."""
    if if_match is None or if_match.strip() == "*":
        return None
    tags = (tag.strip().removeprefix("W/").strip('"') for tag in if_match.split(","))
    # An entity tag is compared as the text it is: "01" is not version 1.
    return frozenset(int(tag) for tag in tags if tag.isdigit() and tag == str(int(tag)))


# Entity tags as the batch gives them (\"4\"), weak or not, or the bare number.
_ETAGS = r'^(\*|(W/)?"?[0-9]{1,9}"?( *, *(W/)?"?[0-9]{1,9}"?)*)$'
IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        max_length=1024,
        pattern=_ETAGS,
        description='Change it only at this version (its `ETag`, `"4"`, from '
        "`GET /batches/{ref}`), or one of these: another is a 412, and nothing changes.",
    ),
    WithJsonSchema({"type": "string", "maxLength": 1024, "pattern": _ETAGS}),
]


@router.patch(
    "/batches/{ref}",
    status_code=202,
    response_model=schemas.BatchAccepted,
    dependencies=WRITER,
    summary="Change a batch's quantity or its arrival",
    tags=["batches"],
    responses={
        **errors(problems.UNKNOWN_BATCH, problems.VERSION_MISMATCH, write=True, keyed=True),
        **located(
            202, {"GetBatch": link("get_batch", "Read it now.", {"ref": "$request.path.ref"})}
        ),
    },
)
async def change_batch(
    ref: BatchRef,
    body: schemas.BatchChange,
    request: Request,
    bus: Bus,
    once: Once,
    if_match: IfMatch = None,
    key: IdempotencyKey = None,
) -> Response:
    """Sets how many units the batch holds (`qty`), as when a shipment arrives short, or
    when it arrives (`eta`), or both, for a `reason` the stock ledger keeps. Order lines
    that no longer fit are deallocated and allocated again to other batches of the sku
    where stock allows; lines no batch can take lose their allocation. A new `eta` moves
    the batch in the order later allocations use (warehouse stock first, then the
    earliest). With `If-Match`, only at that version. Answers 202 with
    `Location: /batches/{ref}`. With an `Idempotency-Key`, a retry gets the first answer
    (a change made at one version is not refused by its own retry)."""
    change = commands.ChangeBatch(
        ref,
        body.qty,
        body.eta,
        new_eta="eta" in body.model_fields_set,
        reason=body.reason,
        note=body.note,
        expected=_versions(if_match),
    )

    async def apply() -> Response:
        await bus.handle(change)
        where = await location(request, "get_batch", ref=ref)
        return answer(request, schemas.BatchAccepted(ref=ref), headers_of(where))

    return await once(key, request, body, apply, headers_of=headers_of)
