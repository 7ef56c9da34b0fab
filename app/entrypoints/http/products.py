"""A sku's stock as a whole: now, arriving, and per batch."""

from fastapi import APIRouter, Request, Response

from app import views
from app.entrypoints.http import problems, schemas
from app.entrypoints.http.answers import After, Sku, answer
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
