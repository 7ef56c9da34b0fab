"""The time, as the service's tables keep it, and as it orders changes."""

import time
from datetime import UTC, datetime
from typing import TypeAlias

# A change's place in time: milliseconds since the epoch, then a sequence
# within the millisecond. A Redis stream entry's id is one (its two numbers);
# a time taken here is one with the nanoseconds within the millisecond.
Position: TypeAlias = tuple[int, int]


def utcnow() -> datetime:
    """Now, in UTC, without a zone: the tables' DateTime columns are naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


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
