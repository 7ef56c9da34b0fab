"""Traces, switched on by the standard OpenTelemetry variables alone, and free when off.

On when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, or ``console``)
or an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); off with neither, with
``OTEL_TRACES_EXPORTER=none`` or ``OTEL_SDK_DISABLED=true``. The SDK reads
the rest itself: ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``, the
sampler (``OTEL_TRACES_SAMPLER``, ``OTEL_TRACES_SAMPLER_ARG``), the
exporter's endpoint, headers, timeout, and ``OTEL_EXPORTER_OTLP_PROTOCOL``
(``http/protobuf``, the default, or ``grpc``).

Off, nothing of OpenTelemetry's SDK is imported and every function here
returns at its first line. On, each process exports its own spans in
batches; the contrib instrumentations trace every statement where it runs
(on the asyncpg connection for PostgreSQL, in SQLAlchemy for SQLite: once
each) and every Redis command; FastAPI's own hooks trace each request. What
only the service can carry across its hops is written here: the W3C
``traceparent`` of the work that raised an event, kept with the event in
the outbox and sent on with each message, and taken up again by whoever
handles the message.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from app.config import InvalidSettings

logger = logging.getLogger(__name__)

SERVICE = "allocation"  # the service's name, unless OTEL_SERVICE_NAME says another
Kind = Literal["internal", "producer", "consumer"]

_provider: Any = None  # the SDK's TracerProvider, while tracing is on


def wanted(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the standard variables in ``env`` switch tracing on."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER")
    if exporter is not None and exporter.strip():
        return exporter.strip().lower() != "none"
    return any(env.get(name) for name in ENDPOINTS)


ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def on() -> bool:
    return _provider is not None


def start() -> None:
    """Switch tracing on for this process, if the environment says so; once per process."""
    global _provider
    if _provider is not None or not wanted():
        return
    from opentelemetry import trace
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or SERVICE})
    provider = TracerProvider(resource=resource)  # its sampler from OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(_exporter()))
    trace.set_tracer_provider(provider)
    AsyncPGInstrumentor().instrument()  # type: ignore[no-untyped-call, unused-ignore]
    RedisInstrumentor().instrument()
    _provider = provider
    logger.info("tracing on: exporting spans as %s", _described())


def stop() -> None:
    """Send what is still to be sent (a process about to exit)."""
    if _provider is not None:
        _provider.force_flush()


def instrument(engine: Any) -> None:
    """Trace the statements of an SQLite engine (PostgreSQL's are traced on asyncpg)."""
    if _provider is None or engine.dialect.name == "postgresql":
        return
    from opentelemetry import metrics, trace
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer

    # The instrumentation's tracer for one engine; its instrument(engine=...)
    # takes the first engine of a process only, and the reader is a second.
    usage = metrics.get_meter(__name__).create_up_down_counter("db.client.connections.usage")
    EngineTracer(trace.get_tracer(__name__), engine.sync_engine, usage)  # type: ignore[no-untyped-call, unused-ignore]


def traceparent() -> str | None:
    """The current span's W3C ``traceparent``, to send on with work it causes."""
    if _provider is None:
        return None
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


@contextlib.contextmanager
def continued(parent: str | None) -> Iterator[None]:
    """Work done within, in the trace of ``parent`` (a ``traceparent``), when there is one."""
    if _provider is None or not parent:
        yield
        return
    from opentelemetry import context, propagate

    token = context.attach(propagate.extract({"traceparent": parent}))
    try:
        yield
    finally:
        context.detach(token)


@contextlib.contextmanager
def span(
    name: str,
    kind: Kind = "internal",
    parent: str | None = None,
    attributes: Mapping[str, str | int] | None = None,
) -> Iterator[None]:
    """A span around the block: a child of ``parent`` if given, else of the current one."""
    if _provider is None:
        yield
        return
    from opentelemetry import trace

    kinds = {
        "internal": trace.SpanKind.INTERNAL,
        "producer": trace.SpanKind.PRODUCER,
        "consumer": trace.SpanKind.CONSUMER,
    }
    tracer = trace.get_tracer(__name__)
    with (
        continued(parent),
        tracer.start_as_current_span(name, kind=kinds[kind], attributes=dict(attributes or {})),
    ):
        yield


def ids() -> tuple[str, str] | None:
    """The current span's trace id and span id, as hex, for a log line; None outside one."""
    if _provider is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def _protocol() -> str:
    env = os.environ
    chosen = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    return chosen.strip().lower()


def _exporter() -> Any:
    name = (os.environ.get("OTEL_TRACES_EXPORTER") or "otlp").split(",")[0].strip().lower()
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise InvalidSettings(f"OTEL_TRACES_EXPORTER: {name!r} is none of otlp, console, none")
    protocol = _protocol()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol != "http/protobuf":
        raise InvalidSettings(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is neither http/protobuf nor grpc"
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    return Http()


def _described() -> str:
    name = (os.environ.get("OTEL_TRACES_EXPORTER") or "otlp").strip().lower()
    if name == "console":
        return "console"
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT", "the default endpoint"
    )
    return f"OTLP ({_protocol()}) to {endpoint}"
