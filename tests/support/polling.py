"""The one way a test waits for a state: poll a condition until a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

Condition = Callable[[], Awaitable[bool]] | Callable[[], bool]


async def eventually(
    condition: Condition,
    within: float,
    message: Callable[[], str] | str,
    *,
    interval: float = 0.02,
) -> None:
    """Return once ``condition()`` holds; fail with ``message`` after ``within`` seconds.

    ``condition`` may be a plain function or a coroutine function. ``message``
    may be a function, called only on failure (to quote a log, say).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() >= deadline:
            text = message if isinstance(message, str) else message()
            raise AssertionError(f"timed out after {within}s: {text}")
        await asyncio.sleep(interval)
