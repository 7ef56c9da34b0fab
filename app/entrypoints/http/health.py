"""For operators: is the process alive, can it serve; and ``/`` to the docs."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.responses import Response

from app.adapters.health import check_all
from app.entrypoints.http import problems
from app.entrypoints.http.dependencies import services
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
BROKER_DOWN = "degraded: events wait in the outbox"
REPLICA_DOWN = "degraded: reads go to the primary"


@router.get(
    "/ready",
    summary="The API can take writes: its database answers",
    response_model=Readiness,
    responses=errors(problems.NOT_READY, every=False),
)
async def ready(request: Request) -> Response:
    """`checks` gives each dependency's state. A broker (Redis, NATS) or a replica that is
    down makes its check `degraded`, not the process unready: writes go on (their events
    wait in the outbox), and reads go to the primary."""
    found = services(request)
    reads = found.read_source()
    checks = await check_all(found.engine(), found.redis(), found.jetstream(), reads.replica)
    for broker in ("redis", "nats"):
        if checks[broker].startswith("error"):
            checks[broker] = BROKER_DOWN
    if checks["replica"] != "off" and (checks["replica"] != "ok" or not reads.replica_healthy):
        checks["replica"] = REPLICA_DOWN
    if checks["database"] != "ok":
        return problem(problems.NOT_READY, "not ready: database unreachable", checks=checks)
    return JSONResponse({"status": "ready", "checks": checks})
