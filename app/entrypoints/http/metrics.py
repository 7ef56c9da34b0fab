"""GET /metrics, in Prometheus's text format: the registry as it stands, nothing read per scrape.

The backlog gauges are kept fresh in the background (app.service_layer.gauges).
With METRICS_TOKEN set, a scrape must carry it as a bearer token.
"""

from fastapi import APIRouter, Request, Response

from app import metrics
from app.entrypoints.http.dependencies import ServiceSettings
from app.entrypoints.http.openapi import operation_id
from app.entrypoints.http.security import metrics_refusal

router = APIRouter(tags=["operations"], generate_unique_id_function=operation_id)

# A few lines of what a scrape gets, after one allocation.
EXAMPLE = """\
# HELP http_requests_total HTTP requests answered
# TYPE http_requests_total counter
http_requests_total{method="POST",route="/allocate",status="202"} 1.0
# HELP allocation_lines_allocated_total Order lines allocated to a batch
# TYPE allocation_lines_allocated_total counter
allocation_lines_allocated_total 1.0
"""


@router.get(
    "/metrics",
    summary="Metrics for Prometheus",
    response_class=Response,
    responses={
        200: {
            "description": "The metrics.",
            "content": {"text/plain": {"examples": {"after one allocation": {"value": EXAMPLE}}}},
        }
    },
)
async def get_metrics(request: Request, settings: ServiceSettings) -> Response:
    """Requests by route and status, allocations, out-of-stock lines, the outbox backlog,
    relay and prune failures and delivery lag, the workers' backlog on the
    change_batch_quantity stream, which dependencies answer, in Prometheus's text format.
    With `METRICS_TOKEN` set, it wants `Authorization: Bearer <METRICS_TOKEN>`."""
    if settings.metrics_token is not None:
        refused = metrics_refusal(request, settings.metrics_token.get_secret_value())
        if refused is not None:
            return refused
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)
