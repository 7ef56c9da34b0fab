"""HTTP routes: translate a request into a command or a view query, nothing more."""

from typing import Annotated, Any
from urllib.parse import quote

import orjson
from dependency_injector.wiring import Provide, inject
from fastapi import APIRouter, Depends, Path, Request, Response, status
from pydantic import AfterValidator

from app import views
from app.container import Container
from app.domain import commands
from app.entrypoints.api import schemas
from app.entrypoints.api.errors import error
from app.service_layer.messagebus import MessageBus

router = APIRouter()

Bus = Annotated[MessageBus, Depends(Provide[Container.bus])]
PathId = Annotated[
    str,
    Path(min_length=1, max_length=schemas.MAX_ID_LENGTH),
    AfterValidator(schemas.printable),
]


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": schemas.Error} for s in statuses}


def _json(body: Any) -> Response:
    # Reads skip the response model: views return plain, already-valid data,
    # and orjson writes it several times faster than validating it again.
    return Response(orjson.dumps(body), media_type="application/json")


def _location(request: Request, name: str, **params: str) -> str:
    # Ids may hold "?", "#", "%" or non-ASCII letters: each is quoted as one path segment.
    quoted = {key: quote(value, safe="") for key, value in params.items()}
    root_path: str = request.scope.get("root_path", "")
    return root_path + str(request.app.url_path_for(name, **quoted))


@router.post(
    "/batches",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.BatchCreated,
    responses=_errors(409, 422),
    summary="Add a batch of stock",
    description="Answers 201 with `Location: /batches/{ref}`. Repeating an identical "
    "batch is harmless; reusing a reference with different details is a 409.",
)
@router.post(
    "/add_batch",
    status_code=status.HTTP_201_CREATED,
    response_model=schemas.BatchCreated,
    responses=_errors(409, 422),
    summary="Add a batch of stock (the book's route)",
    description="The same as `POST /batches`.",
)
@inject
async def add_batch(
    body: schemas.BatchIn, request: Request, response: Response, bus: Bus
) -> schemas.BatchCreated:
    await bus.handle(commands.CreateBatch(body.ref, body.sku, body.qty, body.eta))
    response.headers["Location"] = _location(request, "get_batch", ref=body.ref)
    return schemas.BatchCreated(ref=body.ref)


@router.get(
    "/batches/{ref}",
    response_model=schemas.BatchOut,
    responses=_errors(404, 422),
    summary="A batch's quantities",
)
async def get_batch(ref: PathId, request: Request) -> Response:
    batch = await views.batch(request.app.state.read_engine, ref)
    if batch is None:
        return error(404, f"Unknown batch {ref}")
    return _json(batch)


@router.patch(
    "/batches/{ref}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=schemas.BatchAccepted,
    responses=_errors(404, 409, 422),
    summary="Change a batch's purchased quantity",
    description="Lines that no longer fit are deallocated and reallocated to other "
    "batches where stock allows. Answers 202 with `Location: /batches/{ref}`.",
)
@inject
async def change_batch_quantity(
    ref: PathId, body: schemas.QuantityIn, request: Request, response: Response, bus: Bus
) -> schemas.BatchAccepted:
    await bus.handle(commands.ChangeBatchQuantity(ref, body.qty))
    response.headers["Location"] = _location(request, "get_batch", ref=ref)
    return schemas.BatchAccepted(ref=ref)


@router.post(
    "/allocate",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=schemas.AllocationAccepted,
    responses=_errors(400, 409, 422),
    summary="Allocate an order line",
    description="Answers 202 with `Location: /allocations/{orderid}`: read the "
    "allocation there. An order out of stock is accepted but gets no allocation "
    "(404 there). Sending the same line again changes nothing; the same order "
    "asking for a different quantity of the sku is a 409.",
)
@inject
async def allocate(
    body: schemas.AllocateIn, request: Request, response: Response, bus: Bus
) -> schemas.AllocationAccepted:
    await bus.handle(commands.Allocate(body.orderid, body.sku, body.qty))
    response.headers["Location"] = _location(request, "get_allocations", orderid=body.orderid)
    return schemas.AllocationAccepted(orderid=body.orderid)


@router.get(
    "/allocations/{orderid}",
    response_model=list[schemas.Allocation],
    responses=_errors(404, 422),
    summary="Where an order's lines are allocated",
)
async def get_allocations(orderid: PathId, request: Request) -> Response:
    result = await views.allocations(request.app.state.read_engine, orderid)
    if not result:
        return error(404, f"No allocations for order {orderid}")
    return _json(result)


@router.get(
    "/allocations/{orderid}/{sku}",
    response_model=schemas.Allocation,
    responses=_errors(404, 422),
    summary="Where one line of an order is allocated",
)
async def get_allocation(orderid: PathId, sku: PathId, request: Request) -> Response:
    result = await views.allocation(request.app.state.read_engine, orderid, sku)
    if result is None:
        return error(404, f"Order {orderid} has no allocation of {sku}")
    return _json(result)


@router.get(
    "/products/{sku}",
    response_model=schemas.ProductOut,
    responses=_errors(404, 422),
    summary="Stock of a sku, now and per batch",
    description="Served from a read model kept up to date by events.",
)
async def get_product(sku: PathId, request: Request) -> Response:
    result = await views.product(request.app.state.read_engine, sku)
    if result is None:
        return error(404, f"Unknown sku {sku}")
    return _json(result)
