"""How long to wait before trying again: the service's one backoff.

Exponential: ``base`` seconds after the first failure, doubling with each
one after, up to ``maximum``. With ``jitter``, a wait drawn uniformly below
that ("full jitter"), so that callers who failed together do not try again
together.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base: float  # seconds, after the first failure
    maximum: float
    jitter: bool = False

    def after(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failures in a row (1 for the first)."""
        ceiling = min(self.base * 2 ** max(failures - 1, 0), self.maximum)
        return random.uniform(0, ceiling) if self.jitter else ceiling
