"""Logging: one JSON object per line when not on a terminal, readable text on one.

Every record carries the request id of the work it belongs to (``-`` when
none). uvicorn's own loggers go through the same handler; its access log is
off, as the request middleware writes one line per request itself.

A line per request is the service's most frequent work after the request
itself, so both halves of it are made cheap: the JSON is built as one dict
and written by orjson, and the request lines logged in one turn of the event
loop reach stderr in one write.
"""

import asyncio
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import orjson

from app import correlation

LogFormat = Literal["auto", "json", "text"]

_TEXT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"

# What every LogRecord has; anything else on a record came in ``extra=``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "request_id"}


class JsonFormatter(logging.Formatter):
    """``level``, ``logger``, ``message``, ``request_id``, the extras, ``time`` (UTC).

    An exception goes in ``exc_info`` as its formatted traceback.
    """

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                fields[key] = value
        if record.exc_info:
            fields["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            fields["stack_info"] = self.formatStack(record.stack_info)
        fields["time"] = datetime.fromtimestamp(record.created, UTC)
        return orjson.dumps(fields, default=str).decode()


REQUESTS = "app.requests"  # the logger of the line per request


class _Handler(logging.Handler):
    """The service's handler: told apart from handlers others (a test runner) add.

    Request lines logged within one turn of the event loop are written
    together, at the end of the turn. Any other record is written at once,
    after those: a line that says the process is stopping is never left
    behind in memory.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self._pending: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:  # called holding self.lock
        try:
            self._pending.append(self.format(record))
        except Exception:
            self.handleError(record)
            return
        if record.name == REQUESTS and record.levelno < logging.WARNING:
            if len(self._pending) > 1:
                return  # a write is already due
            try:
                asyncio.get_running_loop().call_soon(self.flush)
                return
            except RuntimeError:
                pass  # no loop in this thread
        self._write()

    def flush(self) -> None:
        self.acquire()
        try:
            self._write()
        finally:
            self.release()

    def _write(self) -> None:
        if not self._pending:
            return
        text = "\n".join(self._pending) + "\n"
        self._pending.clear()
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:
            # Nowhere left to say so but stderr, which is what failed.
            pass


_base_factory = logging.getLogRecordFactory()


def _record_with_request_id(*args: Any, **kwargs: Any) -> logging.LogRecord:
    # Set when the record is made, in the task that logs it: every handler
    # sees it, not only this module's.
    record = _base_factory(*args, **kwargs)
    record.request_id = correlation.request_id.get() or "-"
    return record


def configure(level: str, fmt: LogFormat = "auto") -> None:
    """Send the service's and uvicorn's logs to stderr, in ``fmt``."""
    logging.setLogRecordFactory(_record_with_request_id)
    # Nothing logged shows the thread, process or calling line: skip finding
    # them for every record (the logging module's documented optimisations).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None
    handler = _Handler(sys.stderr)
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler.setFormatter(JsonFormatter() if use_json else logging.Formatter(_TEXT))

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        old.flush()
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
