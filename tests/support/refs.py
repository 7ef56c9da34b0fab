"""References of a test's own, so that tests sharing a database keep apart."""

from __future__ import annotations

import uuid


def random_ref(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
