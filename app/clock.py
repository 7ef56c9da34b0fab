"""The time, as the service's tables keep it."""

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now, in UTC, without a zone: the tables' DateTime columns are naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)
