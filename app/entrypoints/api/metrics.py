"""GET /metrics, in Prometheus's text format."""

import logging

from fastapi import APIRouter, Request, Response

from app import metrics
from app.service_layer.unit_of_work import AbstractUnitOfWork

logger = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])

FAILING_AFTER = 1  # attempts: an event tried once and still pending has failed


@router.get(
    "/metrics",
    summary="Metrics for Prometheus",
    description="Requests by route and status, allocations, out-of-stock lines, the "
    "outbox backlog, relay and prune failures and delivery lag, in Prometheus's text format.",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "The metrics."}},
)
async def get_metrics(request: Request) -> Response:
    await _outbox_gauges(request.app.state.container.uow())
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)


async def _outbox_gauges(uow: AbstractUnitOfWork) -> None:
    # Read at scrape time: the backlog is the database's, whoever fills it.
    try:
        async with uow:
            stats = await uow.outbox.stats(failing_after=FAILING_AFTER)
    except Exception as e:
        logger.warning("outbox metrics unavailable: %s: %s", type(e).__name__, e)
        return
    metrics.OUTBOX_PENDING.set(stats.pending)
    metrics.OUTBOX_FAILING.set(stats.failing)
    metrics.OUTBOX_OLDEST.set(stats.oldest_pending_age or 0.0)
    metrics.OUTBOX_OLDEST_DELIVERED.set(stats.oldest_delivered_age or 0.0)
