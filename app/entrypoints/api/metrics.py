"""GET /metrics, in Prometheus's text format."""

import logging

from fastapi import APIRouter, Response
from redis.asyncio import Redis

from app import metrics
from app.adapters.outbox import FAILING_AFTER
from app.adapters.streams import group_stats
from app.entrypoints.api.dependencies import RedisClient, ServiceSettings, UnitOfWork
from app.entrypoints.api.openapi import operation_id
from app.entrypoints.redis_consumer import STREAM
from app.service_layer.unit_of_work import AbstractUnitOfWork

logger = logging.getLogger(__name__)

router = APIRouter(tags=["operations"], generate_unique_id_function=operation_id)


@router.get(
    "/metrics",
    summary="Metrics for Prometheus",
    description="Requests by route and status, allocations, out-of-stock lines, the "
    "outbox backlog, relay and prune failures and delivery lag, the workers' backlog on the "
    "change_batch_quantity stream, in Prometheus's text format.",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "The metrics."}},
)
async def get_metrics(uow: UnitOfWork, redis: RedisClient, settings: ServiceSettings) -> Response:
    await _outbox_gauges(uow)
    await _stream_gauges(redis, settings.stream_group)
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


async def _stream_gauges(client: Redis | None, group: str) -> None:
    # Read at scrape time too: the backlog is Redis's, whichever worker reads it.
    if client is None:
        return
    try:
        stats = await group_stats(client, STREAM, group)
    except Exception as e:
        logger.warning("stream metrics unavailable: %s: %s", type(e).__name__, e)
        return
    if stats is None:  # no worker has read the stream yet
        return
    metrics.STREAM_PENDING.labels(STREAM, group).set(stats.pending)
    metrics.STREAM_LAG.labels(STREAM, group).set(float("nan") if stats.lag is None else stats.lag)
