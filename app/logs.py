"""Logging: one JSON object per line when not on a terminal, readable text on one.

Every record carries the request id of the work it belongs to (``-`` when
none). uvicorn's own loggers go through the same handler; its access log is
off, as the request middleware writes one line per request itself.
"""

import logging
import sys
from typing import Any, Literal

from pythonjsonlogger.orjson import OrjsonFormatter

from app import correlation

LogFormat = Literal["auto", "json", "text"]

_TEXT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
_JSON_FIELDS = ("levelname", "name", "message", "request_id")


_base_factory = logging.getLogRecordFactory()


def _record_with_request_id(*args: Any, **kwargs: Any) -> logging.LogRecord:
    # Set when the record is made, in the task that logs it: every handler
    # sees it, not only this module's.
    record = _base_factory(*args, **kwargs)
    record.request_id = correlation.request_id.get() or "-"
    return record


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The service's handler, told apart from handlers others (a test runner) add."""


def configure(level: str, fmt: LogFormat = "auto") -> None:
    """Send the service's and uvicorn's logs to stderr, in ``fmt``."""
    logging.setLogRecordFactory(_record_with_request_id)
    # Nothing logged shows the thread, process or calling line: skip finding
    # them for every record (the logging module's documented optimisations).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None
    handler = _Handler(sys.stderr)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    if use_json:
        handler.setFormatter(
            OrjsonFormatter(
                list(_JSON_FIELDS),
                rename_fields={"levelname": "level", "name": "logger"},
                timestamp="time",  # ISO 8601, UTC
            )
        )
    else:
        handler.setFormatter(logging.Formatter(_TEXT))

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)  # libraries: warnings and worse

    for name in ("app", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if name != "app":
            logger.handlers.clear()  # uvicorn's own, set up before the app loaded
            logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
