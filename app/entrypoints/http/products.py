"""A sku's stock as a whole: now, arriving, and per batch."""

from fastapi import APIRouter, Request, Response

from app import views
from app.entrypoints.http import problems, schemas
from app.entrypoints.http.answers import After, HistoryCursor, Limit, Sku, answer, page
from app.entrypoints.http.dependencies import reads_of
from app.entrypoints.http.openapi import errors, operation_id
from app.entrypoints.http.problems import problem

router = APIRouter(generate_unique_id_function=operation_id)


@router.get(
    "/products/{sku}",
    response_model=schemas.ProductOut,
    summary="Read the stock of a sku, now and per batch",
    tags=["products"],
    responses=errors(problems.UNKNOWN_SKU),
)
async def get_product(sku: Sku, request: Request, after: After = None) -> Response:
    """Units available in the warehouse now, units arriving in shipments, and what each
    batch has left. Served from the batches read model, which events keep up to date."""
    result = await views.product(reads_of(request), sku, after)
    if result is None:
        return problem(problems.UNKNOWN_SKU, f"Unknown sku {sku}")
    return answer(request, result)


@router.get(
    "/products/{sku}/history",
    response_model=schemas.HistoryPage,
    summary="Read how a sku's stock came to be what it is, change by change",
    tags=["products"],
    responses=errors(problems.UNKNOWN_SKU),
)
async def get_product_history(
    sku: Sku, request: Request, limit: Limit = 100, after: HistoryCursor = None
) -> Response:
    """The stock ledger's entries of the sku, oldest first: batches added and changed (with
    their `reason`), lines allocated, given back, refused. Each entry's `qty` is its change
    to the batch's available units: the entries add up to what the sku has available. A
    page at a time: `next` (and `Link: <next>; rel="next"`)."""
    start = None if after is None else int(after)
    items, last = await views.history(reads_of(request), limit, start, sku=sku)
    if not items and after is None:
        return problem(problems.UNKNOWN_SKU, f"Unknown sku {sku}")
    return page(request, items, None if last is None else str(last))
