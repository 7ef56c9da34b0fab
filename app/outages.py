"""Outages of what the service depends on, told in two log lines each: when, and for how long.

While Redis, the database or the mail server cannot be reached, every part
of a process that uses it fails, over and over: the relay on each event, the
consumer on each reconnection. Each failure is reported here, and the first
of an outage is logged, with its reason; the first success after it is
logged, with the outage's length and the failures it counted. A gauge,
``allocation_dependency_up``, says which are reachable now.

One record per process, shared by whatever in it reports.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from app import metrics

logger = logging.getLogger(__name__)

# What waits while each is away: said once, when the outage starts.
CONSEQUENCE = {
    "redis": "events wait in the outbox, and messages are not read",
    "nats": "events wait in the outbox, and messages are not read",
    "database": "requests answer 503, and delivery waits",
    "mail": "out-of-stock notices wait in the outbox",
}


@dataclass
class _Outage:
    since: float
    failures: int = 0


# Each dependency used so far: its outage, or None while it answers.
_state: dict[str, _Outage | None] = {}


def failed(dependency: str, reason: str) -> None:
    """Something that needs ``dependency`` failed because it cannot be reached."""
    outage = _state.get(dependency)
    if outage is None:
        outage = _state[dependency] = _Outage(time.monotonic())
        metrics.DEPENDENCY_UP.labels(dependency).set(0)
        metrics.changed()
        consequence = CONSEQUENCE.get(dependency, "what needs it waits")
        logger.warning("%s unavailable (%s): %s; trying again", dependency, reason, consequence)
    outage.failures += 1


def succeeded(dependency: str) -> None:
    """Something that needs ``dependency`` just worked (cheap: called on every success)."""
    if dependency in _state and _state[dependency] is None:
        return
    outage = _state.get(dependency)
    _state[dependency] = None
    metrics.DEPENDENCY_UP.labels(dependency).set(1)
    metrics.changed()
    if outage is not None:
        logger.info(
            "%s available again after %.1f s (%d failed attempts meanwhile)",
            dependency,
            time.monotonic() - outage.since,
            outage.failures,
        )


def down(dependency: str) -> bool:
    return _state.get(dependency) is not None


def forget() -> None:
    """Start afresh, as a new process would (each test does)."""
    _state.clear()
