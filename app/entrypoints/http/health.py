"""For operators: is the process alive, can it serve; and ``/`` to the docs."""

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.responses import Response

from app import outages, tracing
from app.adapters import reads
from app.adapters.read_source import ReadSource
from app.entrypoints.http import problems
from app.entrypoints.http.dependencies import Engine, RedisClient, reads_of
from app.entrypoints.http.openapi import errors, operation_id
from app.entrypoints.http.problems import problem
from app.entrypoints.http.schemas import Health, Readiness

router = APIRouter(tags=["operations"], generate_unique_id_function=operation_id)

CHECK_TIMEOUT = 1.0  # seconds: a dependency slower than this counts as down


@router.get("/", include_in_schema=False)
async def home(request: Request) -> RedirectResponse:
    """Swagger UI: a path, not a URL, whatever host the proxy in front answers for."""
    return RedirectResponse(f"{request.scope.get('root_path', '')}/docs")


@router.get("/health", summary="The process is alive", response_model=Health)
async def health() -> dict[str, str]:
    return {"status": "ok"}


# What the API does without each: it still takes writes and serves reads.
REDIS_DOWN = "degraded: events wait in the outbox"
REPLICA_DOWN = "degraded: reads go to the primary"


@router.get(
    "/ready",
    summary="The API can take writes: its database answers",
    response_model=Readiness,
    responses=errors(problems.NOT_READY, every=False),
)
async def ready(request: Request, engine: Engine, redis: RedisClient) -> Response:
    """`checks` gives each dependency's state. Redis or a replica that is down makes its
    check `degraded`, not the process unready: writes go on (their events wait in the
    outbox), and reads go to the primary."""
    # At once, so that the answer comes within CHECK_TIMEOUT however many hang.
    with tracing.quiet():  # a probe: no trace of its pings
        results = await asyncio.gather(
            _database(engine), _replica(reads_of(request)), _redis(redis)
        )
    checks = dict(zip(("database", "replica", "redis"), results, strict=True))
    # Writes and reads survive Redis and the replica: only the database is needed.
    down = [name for name, result in checks.items() if result.startswith("error")]
    if down:
        detail = f"not ready: {', '.join(down)} unreachable"
        return problem(problems.NOT_READY, detail, checks=checks)
    return JSONResponse({"status": "ready", "checks": checks})


async def _database(engine: AsyncEngine) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await reads.ping(engine)
    except Exception as e:
        return f"error: {type(e).__name__}"
    return "ok"


async def _replica(reads: ReadSource) -> str:
    if reads.replica is None:
        return "off"
    result = await _database(reads.replica)
    if result != "ok" or not reads.replica_healthy:
        return REPLICA_DOWN
    return "ok"


async def _redis(client: Redis | None) -> str:
    if client is None:
        return "off"
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await client.ping()
    except Exception as e:
        outages.failed("redis", f"{type(e).__name__}: {e}")
        return REDIS_DOWN
    outages.succeeded("redis")
    return "ok"
