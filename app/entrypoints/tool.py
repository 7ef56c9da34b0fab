"""How an operator's command runs: logs and traces as the settings say, and a
start that cannot go on (a database unreachable or not migrated) one line and
exit code 1, not a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from app import logs, tracing
from app.adapters.schema_version import StartupError
from app.config import Settings

logger = logging.getLogger("app.cli")
T = TypeVar("T")


def run(settings: Settings, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """``main()`` to its end, in an event loop of its own."""
    logs.configure(settings.log_level, settings.log_format)
    tracing.start()
    try:
        return asyncio.run(main())
    except StartupError as e:
        logger.critical("cannot start: %s", e)
        raise SystemExit(1) from None
    finally:
        tracing.stop()
