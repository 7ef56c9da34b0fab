"""Traces, switched on by the standard OpenTelemetry variables alone, and free when off.

On when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``) or
an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); off with neither, with
``OTEL_TRACES_EXPORTER=none`` or ``OTEL_SDK_DISABLED=true``. On, the SDK
configures itself from the rest, as ``opentelemetry-instrument`` would
(opentelemetry-distro's ``initialize``): the service's name and resource, the
sampler, the exporter, its endpoint, headers and protocol (``http/protobuf``
unless ``OTEL_EXPORTER_OTLP_PROTOCOL`` says ``grpc``), and the installed
instrumentations (every asyncpg statement and Redis command). FastAPI's own
hooks trace each request. Metrics and logs have their own ways out (/metrics,
stderr): the SDK exports neither.

Off, nothing of OpenTelemetry's SDK is imported and every function here
returns at its first line. What only the service can carry across its hops
is written here: the W3C ``traceparent`` of the work that raised an event,
kept with the event in the outbox and sent on with each message, and taken
up again by whoever handles the message.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from importlib.metadata import entry_points
from typing import Any, Literal

from app.config import InvalidSettings

logger = logging.getLogger(__name__)

Kind = Literal["internal", "producer", "consumer"]
ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
# The service's defaults, where the variables say nothing. SQLAlchemy's
# instrumentation is left out: PostgreSQL's statements are asyncpg's, traced
# there, and SQLite's engines are instrumented one by one (``instrument``).
DEFAULTS = {
    "OTEL_SERVICE_NAME": "allocation",
    "OTEL_TRACES_EXPORTER": "otlp",
    "OTEL_METRICS_EXPORTER": "none",
    "OTEL_LOGS_EXPORTER": "none",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "sqlalchemy",
}

_on = False


def wanted(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the standard variables in ``env`` switch tracing on."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER")
    if exporter is not None and exporter.strip():
        return exporter.strip().lower() != "none"
    return any(env.get(name) for name in ENDPOINTS)


def on() -> bool:
    return _on


def start() -> None:
    """Switch tracing on for this process, if the environment says so; once per process."""
    global _on
    if _on or not wanted():
        return
    for name, value in DEFAULTS.items():
        if not os.environ.get(name):
            os.environ[name] = value
    exporters = {name.strip() for name in os.environ["OTEL_TRACES_EXPORTER"].split(",")}
    known = {"otlp", *(e.name for e in entry_points(group="opentelemetry_traces_exporter"))}
    if exporters - known:
        raise InvalidSettings(
            f"OTEL_TRACES_EXPORTER: {', '.join(sorted(exporters - known))} is none of "
            f"{', '.join(sorted(known))}, none"
        )
    from opentelemetry.instrumentation.auto_instrumentation import initialize

    initialize(swallow_exceptions=False)
    _on = True
    logger.info("tracing on: exporting spans as %s", os.environ["OTEL_TRACES_EXPORTER"])


def stop() -> None:
    """Send what is still to be sent (a process about to exit)."""
    if _on:
        from opentelemetry import trace

        provider: Any = trace.get_tracer_provider()
        provider.force_flush()


def instrument(engine: Any) -> None:
    """Trace the statements of an SQLite engine (PostgreSQL's are traced on asyncpg)."""
    if not _on or engine.dialect.name == "postgresql":
        return
    from opentelemetry import metrics, trace
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer

    # The instrumentation's tracer for one engine; its instrument(engine=...)
    # takes the first engine of a process only, and the reader is a second.
    usage = metrics.get_meter(__name__).create_up_down_counter("db.client.connections.usage")
    EngineTracer(trace.get_tracer(__name__), engine.sync_engine, usage)  # type: ignore[no-untyped-call, unused-ignore]


def traceparent() -> str | None:
    """The current span's W3C ``traceparent``, to send on with work it causes."""
    if not _on:
        return None
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


@contextlib.contextmanager
def continued(parent: str | None) -> Iterator[None]:
    """Work done within, in the trace of ``parent`` (a ``traceparent``), or of its own
    without one; traced even inside ``quiet``: a poll that found work traces the work."""
    if not _on:
        yield
        return
    from opentelemetry import context, propagate

    carrier = {"traceparent": parent} if parent else {}
    token = context.attach(propagate.extract(carrier, context=context.Context()))
    try:
        yield
    finally:
        context.detach(token)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Nothing within is traced but what ``continued`` takes up: for background polls
    (the relay's, the gauges', a consumer's reads) and probes, which would otherwise
    make a one-span trace of each statement or command, many a minute, while idle."""
    if not _on:
        yield
        return
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    with suppress_instrumentation():
        yield


@contextlib.contextmanager
def span(
    name: str, kind: Kind = "internal", attributes: Mapping[str, str | int] | None = None
) -> Iterator[None]:
    """A span around the block, a child of the current one (``continued`` sets another)."""
    if not _on:
        yield
        return
    from opentelemetry import trace

    kinds = {
        "internal": trace.SpanKind.INTERNAL,
        "producer": trace.SpanKind.PRODUCER,
        "consumer": trace.SpanKind.CONSUMER,
    }
    tracer = trace.get_tracer(__name__)
    with tracer.start_as_current_span(name, kind=kinds[kind], attributes=dict(attributes or {})):
        yield


def ids() -> tuple[str, str] | None:
    """The current span's trace id and span id, as hex, for a log line; None outside one."""
    if not _on:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"
