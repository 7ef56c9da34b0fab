"""Prometheus metrics: what the service counts and times.

One registry per process; several processes of one server share theirs
through prometheus-client's multiprocess mode, each writing its samples to
files in ``PROMETHEUS_MULTIPROC_DIR``, and a scrape of any of them reads all
the files: ``allocation serve --workers N`` makes the directory itself
(``shared_between_processes``), unless the variable names one already.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from app.domain import events

# No *_created series: a timestamp per series, a sixth of a scrape, that no
# dashboard of this service reads.
disable_created_metrics()  # type: ignore[no-untyped-call, unused-ignore]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter("http_requests_total", "HTTP requests answered", ["method", "route", "status"])
REQUEST_SECONDS = Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["method", "route", "status"],
    buckets=_LATENCY_BUCKETS,
)
ALLOCATIONS = Counter("allocation_lines_allocated_total", "Order lines allocated to a batch")
DEALLOCATIONS = Counter(
    "allocation_lines_deallocated_total", "Order lines taken off a batch that shrank"
)
OUT_OF_STOCK = Counter("allocation_out_of_stock_total", "Order lines no batch could take")
STOCK_OUTS = Counter(
    "allocation_stock_outs_total",
    "Stock-outs begun: a sku's first line no batch could take since stock was last added",
)
HANDLER_FAILURES = Counter(
    "allocation_event_handler_failures_total",
    "Event deliveries a handler failed; the event stays in the outbox",
    ["handler"],
)
DEAD_LETTERS = Counter(
    "allocation_dead_letters_total",
    "External messages given up on and put on the dead-letter list",
    ["reason"],
)
RELAY_FAILURES = Counter(
    "allocation_relay_failures_total",
    "Outbox relay passes that failed, and events it could not deliver whole",
)
PRUNE_FAILURES = Counter(
    "allocation_outbox_prune_failures_total",
    "Passes at pruning delivered events that failed; the outbox grows meanwhile",
)
DELIVERY_LAG = Histogram(
    "allocation_event_delivery_lag_seconds",
    "From an event to an after-commit handler finishing with it (read models "
    "have none: they change in the event's own transaction)",
    ["handler"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0),
)
OUTBOX_PENDING = Gauge(
    "allocation_outbox_pending_events",
    "Events not yet delivered to all their handlers",
    multiprocess_mode="mostrecent",
)
OUTBOX_OLDEST = Gauge(
    "allocation_outbox_oldest_pending_seconds",
    "Age of the oldest undelivered event (0 when none)",
    multiprocess_mode="mostrecent",
)
OUTBOX_OLDEST_DELIVERED = Gauge(
    "allocation_outbox_oldest_delivered_seconds",
    "Age of the oldest delivered event still kept; well past OUTBOX_RETENTION, "
    "pruning is not keeping up",
    multiprocess_mode="mostrecent",
)
OUTBOX_FAILING = Gauge(
    "allocation_outbox_failing_events",
    "Undelivered events whose handlers failed at least once",
    multiprocess_mode="mostrecent",
)
STREAM_PENDING = Gauge(
    "allocation_stream_pending_entries",
    "Entries of a stream a worker of the consumer group read and has not acknowledged",
    ["stream", "group"],
    multiprocess_mode="mostrecent",
)
STREAM_LAG = Gauge(
    "allocation_stream_lag_entries",
    "Entries of a stream no worker of the consumer group has read yet",
    ["stream", "group"],
    multiprocess_mode="mostrecent",
)
JETSTREAM_PENDING = Gauge(
    "allocation_jetstream_pending_messages",
    "Messages of a subject's stream not yet delivered to the durable consumer",
    ["subject", "consumer"],
    multiprocess_mode="mostrecent",
)
JETSTREAM_ACK_PENDING = Gauge(
    "allocation_jetstream_ack_pending_messages",
    "Messages delivered to a worker of the durable consumer and not acknowledged yet",
    ["subject", "consumer"],
    multiprocess_mode="mostrecent",
)
JETSTREAM_REDELIVERED = Gauge(
    "allocation_jetstream_redelivered_messages",
    "Messages of the durable consumer delivered more than once and not acknowledged yet",
    ["subject", "consumer"],
    multiprocess_mode="mostrecent",
)

DEPENDENCY_UP = Gauge(
    "allocation_dependency_up",
    "1 while this process reaches the dependency (database, redis, mail), 0 during an outage; "
    "absent until it was first used",
    ["dependency"],
    multiprocess_mode="mostrecent",
)

READS = Counter(
    "allocation_reads_total",
    "Reads answered from the replica or the primary (counted with a replica only)",
    ["source"],
)
REPLICA_BEHIND = Counter(
    "allocation_replica_behind_total",
    "Reads given a write's position that the replica had not replayed within "
    "REPLICA_WAIT; the primary answered them",
)
REPLICA_UP = Gauge(
    "allocation_replica_up",
    "1 while reads go to the replica, 0 while it is failing and the primary serves them",
    multiprocess_mode="mostrecent",
)
REPLICA_LAG = Gauge(
    "allocation_replica_lag_seconds",
    "How far the replica's applied state is behind the primary, at the last check",
    multiprocess_mode="mostrecent",
)

_COUNTED: dict[type[events.Event], Counter] = {
    events.Allocated: ALLOCATIONS,
    events.Deallocated: DEALLOCATIONS,
    events.LineRefused: OUT_OF_STOCK,
    events.OutOfStock: STOCK_OUTS,
}


_request_series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

# A scrape is rendered again only when something was counted since the last
# one, or it is RENDERED_FOR old: rendering costs milliseconds (prometheus-
# client formats each sample in Python), several reads' worth, and a burst
# of scrapes must not cost a burst of renders. What requests count, and what
# the service's own loops report (deliveries, the backlog gauges, outages,
# the replica), is shown at once; anything else within RENDERED_FOR.
RENDERED_FOR = 1.0  # seconds
SCRAPE_ROUTE = "/metrics"
_changes = 0
_rendered: tuple[int, float, bytes] = (-1, 0.0, b"")
_shared: tuple[float, bytes] = (float("-inf"), b"")  # multiprocess mode: when, what


def changed() -> None:
    """Something was counted: the next scrape renders afresh."""
    global _changes
    _changes += 1


def request_answered(method: str, route: str, status: int, seconds: float) -> None:
    # labels() takes a lock and builds a key each time: keep each series' pair.
    series = _request_series.get((method, route, status))
    if series is None:
        labels = (method, route, str(status))
        series = (REQUESTS.labels(*labels), REQUEST_SECONDS.labels(*labels))
        _request_series[(method, route, status)] = series
    series[0].inc()
    series[1].observe(seconds)
    if route != SCRAPE_ROUTE:
        changed()


def committed(new: list[events.Event]) -> None:
    """Count what a commit did, from the events it raised."""
    for event in new:
        counter = _COUNTED.get(type(event))
        if counter is not None:
            counter.inc()


def delivered(handler: str, event: events.Event) -> None:
    lag = (datetime.now(UTC) - event.occurred_at).total_seconds()
    DELIVERY_LAG.labels(handler).observe(max(lag, 0.0))
    changed()


def exposition() -> tuple[bytes, str]:
    """The metrics of this process, or of every process of the server in multiprocess mode.

    In multiprocess mode what the other processes counted does not show in this
    one's ``changed``: a scrape is at most RENDERED_FOR old. Reading every
    process's files costs a few milliseconds, and a flood of scrapes must cost
    no more than as many reads (make bench).
    """
    global _rendered, _shared
    now = time.monotonic()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shared_at, shared = _shared
        if now - shared_at >= RENDERED_FOR:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call, unused-ignore]
            shared = generate_latest(registry)
            _shared = (now, shared)
        return shared, CONTENT_TYPE_LATEST
    changes, rendered_at, body = _rendered
    if changes != _changes or now - rendered_at >= RENDERED_FOR:
        body = generate_latest(REGISTRY)
        _rendered = (_changes, now, body)
    return body, CONTENT_TYPE_LATEST


@contextlib.contextmanager
def shared_between_processes() -> Iterator[None]:
    """The processes started within count into one set of metrics (multiprocess mode).

    In a directory of their own, made here and removed after, unless
    ``PROMETHEUS_MULTIPROC_DIR`` names one already. The processes must
    import prometheus-client after this: uvicorn's spawn them afresh.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="allocation-metrics-") as directory:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        try:
            yield
        finally:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]
