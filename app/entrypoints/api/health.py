"""Health for operators: is the process alive, and can it serve?"""

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters import database
from app.adapters.read_source import ReadSource
from app.entrypoints.api.dependencies import Engine, RedisClient, reads_of
from app.entrypoints.api.openapi import operation_id
from app.entrypoints.api.schemas import Health, NotReady, Readiness

router = APIRouter(tags=["operations"], generate_unique_id_function=operation_id)

CHECK_TIMEOUT = 1.0  # seconds: a dependency slower than this counts as down


@router.get("/health", summary="The process is alive", response_model=Health)
async def health() -> dict[str, str]:
    return {"status": "ok"}


NOT_READY = {
    "message": "not ready: redis unreachable",
    "checks": {"database": "ok", "replica": "off", "redis": "error: ConnectionError"},
}


@router.get(
    "/ready",
    summary="The service can serve: its database (and Redis, when configured) answer",
    description="`checks` gives each dependency's state. A replica that is down makes "
    "`replica` degraded, not the process unready: reads go to the primary meanwhile.",
    response_model=Readiness,
    responses={
        503: {
            "model": NotReady,
            "description": "A dependency is down; `message` names it.",
            "content": {
                "application/json": {
                    "examples": {"redis down": {"summary": "redis down", "value": NOT_READY}}
                }
            },
        }
    },
)
async def ready(request: Request, engine: Engine, redis: RedisClient) -> JSONResponse:
    # At once, so that the answer comes within CHECK_TIMEOUT however many hang.
    results = await asyncio.gather(_database(engine), _replica(reads_of(request)), _redis(redis))
    checks = dict(zip(("database", "replica", "redis"), results, strict=True))
    # Reads survive the replica: without it the process still serves everything.
    down = [
        name for name, result in checks.items() if name != "replica" and result not in ("ok", "off")
    ]
    if down:
        body: dict[str, Any] = {"message": f"not ready: {', '.join(down)} unreachable"}
        return JSONResponse({**body, "checks": checks}, status_code=503)
    return JSONResponse({"status": "ready", "checks": checks})


async def _database(engine: AsyncEngine) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await database.ping(engine)
    except Exception as e:
        return f"error: {type(e).__name__}"
    return "ok"


async def _replica(reads: ReadSource) -> str:
    if reads.replica is None:
        return "off"
    result = await _database(reads.replica)
    if result != "ok" or not reads.replica_healthy:
        return "degraded: reads go to the primary"
    return "ok"


async def _redis(client: Redis | None) -> str:
    if client is None:
        return "off"
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await client.ping()
    except Exception as e:
        return f"error: {type(e).__name__}"
    return "ok"
