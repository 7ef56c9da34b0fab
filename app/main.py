"""The ASGI application: ``uvicorn app.main:app``."""

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.middleware.cors import CORSMiddleware

from app import bootstrap, logs, tracing
from app.adapters.read_source import CONSISTENCY_TOKEN
from app.adapters.schema_version import StartupError, check_database
from app.config import InvalidSettings, Settings, load_settings
from app.entrypoints.http import (
    asyncapi,
    batches,
    errors,
    health,
    holds,
    metrics,
    openapi,
    orders,
    products,
    schemas,
)
from app.entrypoints.http.dependencies import Services
from app.entrypoints.http.idempotency import HEADER as IDEMPOTENCY_KEY
from app.entrypoints.http.idempotency import REPLAYED
from app.entrypoints.http.middleware import HEADER as REQUEST_ID
from app.entrypoints.http.middleware import BodyLimit, Head, RequestContext
from app.entrypoints.http.security import WriterToken

logger = logging.getLogger("app.main")
PROBES = ("/health", "/ready", "/metrics")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application; nothing connects until its lifespan starts."""
    container = bootstrap.container_for(settings or load_settings())
    settings = container.settings()
    settings.check_api()
    tracing.start()  # when the OTEL_* variables say so

    @asynccontextmanager
    async def lifespan(application: FastAPI) -> AsyncIterator[None]:
        logs.configure(settings.log_level, settings.log_format)
        async with AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(bootstrap.opened(container))
                await container.liveness().start()
                stack.push_async_callback(container.liveness().stop)
            except StartupError as e:
                bootstrap.refused(e, settings)
                raise
            reads = container.read_source()
            if reads.replica is not None:
                try:
                    await check_database(reads.replica)
                except StartupError as e:
                    reads.replica_failed(e)  # reads survive the replica, from the start too
            await stack.enter_async_context(bootstrap.background(container))
            # What start-up built lives as long as the process: once it is out of
            # the collector's sight, a full collection scans only what requests
            # left behind, a few milliseconds rather than 80 with every request
            # waiting (p99 of reads under load: 70 ms -> 15 ms). Collected first,
            # so that no garbage is kept for good.
            gc.collect()
            gc.freeze()
            logger.info("serving (environment: %s)", settings.environment)
            if settings.api_token is None:
                # Outside development only with ALLOW_ANONYMOUS_WRITES (Settings.check_api).
                logger.warning("API_TOKEN is not set: anyone who can reach the API can write")
            # uvicorn leaves on SIGTERM once in-flight requests have finished.
            yield
            logger.info("shutting down: stopping the relay")
        tracing.stop()
        logger.info("stopped")

    # Swagger UI's and ReDoc's files served by the app itself (fastapi-offline), not
    # from a CDN: /docs works where the browser cannot reach the internet.
    app = FastAPIOffline(
        title="Allocation service",
        version="1.0.0",
        description=openapi.DESCRIPTION,
        openapi_tags=openapi.TAGS,
        root_path=settings.root_path,
        lifespan=lifespan,
        # Swagger UI: no pattern, length or bounds beside a parameter; the words of
        # its description say the rule.
        swagger_ui_parameters={"showCommonExtensions": False},
        # FastAPI's own OpenTelemetry hooks: a span per request when tracing is
        # on (app.tracing), and not even a look for an SDK when it is off.
        # Metrics and logs have their own ways out (/metrics, stderr).
        telemetry={
            "tracing": tracing.on(),
            "metrics": False,
            "logs": False,
            "operation_spans": False,
            # Probes and scrapes are not work: an orchestrator's every 10 s would be a trace.
            "exclude": lambda scope: scope["path"].endswith(PROBES),
        },
        # The routers' routes served as the app's own, ahead of /docs: an
        # include_router()'d router is matched through a wrapper per request,
        # a tenth of a read's CPU (make bench: reads).
        routes=[
            *batches.router.routes,
            *orders.router.routes,
            *holds.router.routes,
            *products.router.routes,
            *health.router.routes,
            *metrics.router.routes,
            *asyncapi.router.routes,
        ],
    )
    # /x/ for /x: a relative redirect, from the 404 handler (app.entrypoints.http.errors).
    app.router.redirect_slashes = False
    # Where every route's dependencies come from (app.entrypoints.http.dependencies).
    services: Services = container
    app.state.services = services
    errors.install(app)
    openapi.install(app, schemas.EXAMPLED, token=settings.api_token is not None)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(Head)
    if settings.api_token is not None:
        # Ahead of the body limit: who the caller is comes before what it sent.
        app.add_middleware(
            WriterToken, token=settings.api_token.get_secret_value(), routes=app.router.routes
        )
    if settings.cors_origins:
        # Only with origins to allow: without, no request pays for a CORS layer. Outside
        # the token's check: a preflight needs none, and a page can read a 401. The
        # scripts of an allowed origin may read the headers a caller follows.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "HEAD", "POST", "PATCH"],
            allow_headers=["Authorization", "Content-Type", IDEMPOTENCY_KEY, REQUEST_ID],
            expose_headers=[
                *("Location", "Link", CONSISTENCY_TOKEN, "Retry-After", REPLAYED),
                *(REQUEST_ID, "WWW-Authenticate", "Allow"),
            ],
            max_age=600,  # seconds a browser may keep a preflight's answer
        )
    app.add_middleware(RequestContext)  # outermost: a 401 or a 413 is logged and counted too
    return app


try:
    app = create_app()
except InvalidSettings as e:
    # One line, and nothing for uvicorn to print a traceback of.
    logs.cannot_start(str(e))
    raise SystemExit(1) from None
