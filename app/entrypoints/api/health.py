"""Health for operators: is the process alive, and can it serve?"""

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

router = APIRouter(tags=["operations"])

CHECK_TIMEOUT = 1.0  # seconds: a dependency slower than this counts as down


@router.get("/health", summary="The process is alive", response_model=dict[str, str])
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    summary="The service can serve: its database (and Redis, when configured) answer",
    responses={503: {"description": "A dependency is down; `message` names it."}},
)
async def ready(request: Request) -> JSONResponse:
    state = request.app.state
    checks = {
        "database": await _database(state.engine),
        "read_database": await _database(state.read_engine),
        "redis": "off" if state.redis is None else await _redis(state.redis),
    }
    down = [name for name, result in checks.items() if result not in ("ok", "off")]
    if down:
        body: dict[str, Any] = {"message": f"not ready: {', '.join(down)} unreachable"}
        return JSONResponse({**body, "checks": checks}, status_code=503)
    return JSONResponse({"status": "ready", "checks": checks})


async def _database(engine: AsyncEngine) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as e:
        return f"error: {type(e).__name__}"
    return "ok"


async def _redis(client: Redis) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await client.ping()
    except Exception as e:
        return f"error: {type(e).__name__}"
    return "ok"
