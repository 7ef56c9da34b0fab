"""The ASGI application: ``uvicorn app.main:app``."""

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from dependency_injector import providers
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from app import container as composition
from app import logs, tracing
from app.adapters.schema_version import StartupError, check_database
from app.config import InvalidSettings, Settings
from app.container import Container
from app.entrypoints import gauges
from app.entrypoints.api import asyncapi, docs, errors, health, metrics, openapi, routes
from app.entrypoints.api.cors import Cors
from app.entrypoints.api.dependencies import Services
from app.entrypoints.api.middleware import BodyLimit, Head, RequestContext
from app.entrypoints.api.security import WriterToken

logger = logging.getLogger("app.main")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application; nothing connects until its lifespan starts."""
    container = Container()
    if settings is not None:
        container.settings.override(providers.Object(settings))
    settings = container.settings()
    settings.check_api()
    tracing.start()  # when the OTEL_* variables say so

    @asynccontextmanager
    async def lifespan(application: FastAPI) -> AsyncIterator[None]:
        logs.configure(settings.log_level, settings.log_format)
        await composition.start(container)
        try:
            await check_database(container.engine())
            await container.liveness().start()
        except StartupError as e:
            logger.critical("cannot start: %s", e)
            logs.said(e)  # and uvicorn does not print its traceback after that line
            await composition.stop(container)
            raise
        reads = container.read_source()
        if reads.replica is not None:
            try:
                await check_database(reads.replica)
            except StartupError as e:
                # Reads survive the replica, from the start too.
                reads.replica_failed(e)
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(reads.watch(stop), name="replica watch"),
            asyncio.create_task(
                gauges.keep(
                    container.uow,
                    gauges.Backlogs(
                        container.redis(),
                        settings.stream_group,
                        container.jetstream(),
                        settings.nats_durable,
                    ),
                    stop,
                ),
                name="gauges",
            ),
        ]
        if settings.relay_enabled:
            tasks.append(asyncio.create_task(container.relay().run(stop), name="outbox relay"))
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
        try:
            yield
        finally:
            # uvicorn gets here on SIGTERM once in-flight requests have finished.
            logger.info("shutting down: stopping the relay")
            stop.set()
            await asyncio.gather(*tasks)
            await container.liveness().stop()
            await composition.stop(container)
            tracing.stop()
            logger.info("stopped")

    # Swagger UI's and ReDoc's files served by the app itself, not from a CDN:
    # /docs works where the browser cannot reach the internet. The pages are
    # the service's own (app.entrypoints.api.docs).
    app = FastAPIOffline(
        docs_url=None,
        redoc_url=None,
        static_url=docs.STATIC,
        title="Allocation service",
        version="1.0.0",
        description=openapi.DESCRIPTION,
        openapi_tags=openapi.TAGS,
        root_path=settings.root_path,
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry hooks: a span per request when tracing is
        # on (app.tracing), and not even a look for an SDK when it is off.
        # Metrics and logs have their own ways out (/metrics, stderr).
        telemetry={
            "tracing": tracing.on(),
            "metrics": False,
            "logs": False,
            "operation_spans": False,
        },
        # The routers' routes served as the app's own, ahead of /docs: an
        # include_router()'d router is matched through a wrapper per request,
        # a tenth of a read's CPU. The routers set nothing an include would add.
        routes=[
            *routes.router.routes,
            *health.router.routes,
            *metrics.router.routes,
            *docs.router.routes,
            *asyncapi.router.routes,
        ],
    )
    # /x/ for /x: a relative redirect, from the 404 handler (app.entrypoints.api.errors).
    app.router.redirect_slashes = False
    # Where every route's dependencies come from (app.entrypoints.api.dependencies).
    services: Services = container
    app.state.services = services
    errors.install(app)
    # What /openapi.json says of the errors: no 401 (nor a security scheme)
    # where no API_TOKEN is set, and the 413 of the app's own limit.
    openapi.install(
        app, token=settings.api_token is not None, max_body_bytes=settings.max_body_bytes
    )
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(Head)
    if settings.api_token is not None:
        # Ahead of the body limit: who the caller is comes before what it sent.
        app.add_middleware(
            WriterToken, token=settings.api_token.get_secret_value(), routes=app.router.routes
        )
    if settings.cors_origins:
        # Only with origins to allow: without, no request pays for a CORS layer. Outside
        # the token's check: a preflight needs none, and a page can read a 401.
        app.add_middleware(Cors, origins=settings.cors_origins)
    app.add_middleware(RequestContext)  # outermost: a 401 or a 413 is logged and counted too
    return app


try:
    app = create_app()
except InvalidSettings as e:
    # One line, and nothing for uvicorn to print a traceback of.
    raise SystemExit(f"cannot start: {e}") from None
