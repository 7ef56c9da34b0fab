"""The time, as the service's tables keep it, and as it orders changes."""

import time
from datetime import UTC, datetime, timedelta
from typing import TypeAlias

# A change's place in time: milliseconds since the epoch, then a sequence
# within the millisecond. A Redis stream entry's id is one (its two numbers);
# a time taken here is one with the nanoseconds within the millisecond.
Position: TypeAlias = tuple[int, int]


def utcnow() -> datetime:
    """Now, in UTC, without a zone: the tables' DateTime columns are naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


class Clock:
    """What the domain's deadlines (a hold's ``expires_at``) are measured against."""

    def now(self) -> datetime:
        """As ``utcnow``: naive UTC."""
        return utcnow()


class FakeClock(Clock):
    """A clock that moves only when told: for tests of what time does."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or utcnow()

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)


_clock = Clock()


def now() -> datetime:
    """Now, by the clock in use (naive UTC)."""
    return _clock.now()


def use(clock: Clock) -> Clock:
    """Measure deadlines by ``clock`` from now on; returns the one it replaces."""
    global _clock
    previous, _clock = _clock, clock
    return previous


def position_now() -> Position:
    """Now, as a Position."""
    nanoseconds = time.time_ns()
    return nanoseconds // 1_000_000, nanoseconds % 1_000_000


def position_text(position: Position) -> str:
    """As a stream id is written: ``<milliseconds>-<sequence>``."""
    return f"{position[0]}-{position[1]}"


def parse_position(text: bytes | str) -> Position:
    """A position written as ``<milliseconds>-<sequence>``; ValueError if it is none."""
    value = text.decode("ascii") if isinstance(text, bytes) else text
    ms, _, seq = value.partition("-")
    return int(ms), int(seq)
