"""Logging: one JSON object per line when not on a terminal, readable text on one.

Every record carries the request id of the work it belongs to (``-`` when
none). uvicorn's own loggers go through the same handler; its access log is
off, as the request middleware writes one line per request itself.

A line per request is the service's most frequent work after the request
itself, so it is made cheap: where the line goes only to the service's own
JSON handler (as deployed), ``request_line`` builds it straight from its
fields, with no LogRecord; and the request lines of one turn of the event
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
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._add(line, record.name == REQUESTS and record.levelno < logging.WARNING)

    def add_request_line(self, fields: dict[str, Any]) -> None:
        """The line JsonFormatter would make of a request line's record with these fields."""
        line = orjson.dumps(fields, default=str).decode()
        self.acquire()
        try:
            self._add(line, True)
        finally:
            self.release()

    def _add(self, line: str, request_line: bool) -> None:  # called holding self.lock
        self._pending.append(line)
        if request_line:
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


_requests = logging.getLogger(REQUESTS)


def request_line(message: str, fields: dict[str, Any]) -> None:
    """Log the line of one answered request at INFO: ``message``, ``fields`` as its extras.

    Where nothing but the service's JSON handler would see the record, the
    line is built from the fields at once: the same line, for a fifth of the
    CPU. Anywhere else (text on a terminal, a handler or a filter someone
    added, a test capturing records) it is logged as a record, as usual.
    """
    handler = _only_json_handler()
    if handler is None:
        _requests.info(message, extra=fields)
        return
    handler.add_request_line(
        {
            "level": "INFO",
            "logger": REQUESTS,
            "message": message,
            "request_id": correlation.request_id.get() or "-",
            **fields,
            "time": datetime.now(UTC),
        }
    )


def _only_json_handler() -> "_Handler | None":
    """The service's JSON handler, if it is the only one an INFO request line reaches."""
    if _requests.filters or _requests.disabled or not _requests.isEnabledFor(logging.INFO):
        return None
    found: _Handler | None = None
    logger: logging.Logger | None = _requests
    while logger is not None:
        for handler in logger.handlers:
            if (
                found is not None
                or not isinstance(handler, _Handler)
                or type(handler.formatter) is not JsonFormatter
                or handler.filters
                or handler.level > logging.INFO
            ):
                return None
            found = handler
        logger = logger.parent if logger.propagate else None
    return found


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
