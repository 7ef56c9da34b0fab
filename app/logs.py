"""Logging: one JSON object per line when not on a terminal, readable text on one.

Every record carries the request id of the work it belongs to (``-`` when
none). uvicorn's own loggers go through the same handler; its access log is
off, as the request middleware writes one line per request itself.

A line per request is the service's most frequent work after the request
itself, so it is made cheap: where the line goes only to the service's own
JSON handler (as deployed), ``request_line`` builds it straight from its
fields, with no LogRecord; and the request lines of one turn of the event
loop reach stderr in one write. Other records go through python-json-logger's
formatter, to the same fields in the same order (``bench/log_lines.py``
measures each way).
"""

import asyncio
import logging
import os
import re
import sys
import traceback
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import orjson
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter

from app import correlation, tracing

LogFormat = Literal["auto", "json", "text"]

_TEXT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
# What a text line must not carry as it came: control characters (C0, DEL,
# C1) and the line and paragraph separators. A path with %0a in it would
# otherwise start a line of its own, and could pass for another record.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class JsonFormatter(OrjsonFormatter):
    """``level``, ``logger``, ``message``, ``request_id``, the extras, ``time`` (UTC).

    python-json-logger's, on orjson. An exception goes in ``exc_info`` as its
    formatted traceback. uvicorn's ``color_message`` is its message again,
    with terminal colours: not for a log.
    """

    def __init__(self) -> None:
        super().__init__(
            "{levelname}{name}{message}{request_id}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],
            timestamp="time",
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        if log_data["request_id"] is None:  # a record made before configure()
            log_data["request_id"] = "-"


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char) or f"\\x{ord(char):02x}"


def escape(text: str) -> str:
    """``text`` on one line: each control character written as an escape, ``\\n`` for a newline."""
    return _CONTROL.sub(_escaped, text)


class TextFormatter(logging.Formatter):
    """One line per record for a person to read, nothing in it as a request sent it.

    The message is escaped; a traceback follows on lines of its own, each
    indented, so that no line of it can pass for a record.
    """

    def __init__(self) -> None:
        super().__init__(_TEXT, defaults={"request_id": "-"})

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape(record.getMessage())
        record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        trace_id = getattr(record, "trace_id", None)
        if trace_id is not None:
            line += f" trace_id={trace_id} span_id={getattr(record, 'span_id', '-')}"
        trace = self.formatException(record.exc_info) if record.exc_info else record.exc_text
        if trace:
            line += "".join(f"\n    {escape(part)}" for part in trace.splitlines())
        return line


REQUESTS = "app.requests"  # the logger of the line per request
_TRACEBACK = "Traceback (most recent call last):"


# The last lines of tracebacks not to print: of exceptions the service has said in a line.
_said: set[str] = set()


def said(error: BaseException) -> None:
    """``error`` has been logged, in one line: a traceback of it logged as a message is left out.

    uvicorn logs the traceback of a refused start after the line that says why.
    """
    _said.add(traceback.format_exception_only(error)[-1].rstrip())


def _traceback_as_field(record: logging.LogRecord) -> bool:
    """A traceback logged as a message (uvicorn's, when startup fails) becomes a field.

    The line's message is then the exception's own last line; the traceback
    goes where any other is, ``exc_info``. True if the record was one.
    """
    if record.exc_info or not isinstance(record.msg, str) or not record.msg.startswith(_TRACEBACK):
        return False
    record.exc_text = record.msg.rstrip()
    record.msg, record.args = record.exc_text.splitlines()[-1], None
    return True


class ServiceHandler(logging.Handler):
    """The service's handler: told apart from handlers others (a test runner) add.

    Request lines logged within one turn of the event loop are written
    together, at the end of the turn. Any other record is written at once,
    after those: a line that says the process is stopping is never left
    behind in memory.
    """

    def __init__(self, stream: TextIO | None = None, fmt: LogFormat = "auto") -> None:
        super().__init__()
        self.stream = stream or sys.stderr
        self._pending: list[str] = []
        self.setFormatter(formatter(fmt, self.stream))

    def emit(self, record: logging.LogRecord) -> None:  # called holding self.lock
        if _traceback_as_field(record) and record.msg in _said:
            return
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
    line = {
        "level": "INFO",
        "logger": REQUESTS,
        "message": message,
        "request_id": correlation.request_id.get() or "-",
        **fields,
    }
    ids = tracing.ids()
    if ids is not None:
        line["trace_id"], line["span_id"] = ids
    line["time"] = datetime.now(UTC)
    handler.add_request_line(line)


def _only_json_handler() -> "ServiceHandler | None":
    """The service's JSON handler, if it is the only one an INFO request line reaches."""
    if _requests.filters or _requests.disabled or not _requests.isEnabledFor(logging.INFO):
        return None
    found: ServiceHandler | None = None
    logger: logging.Logger | None = _requests
    while logger is not None:
        for handler in logger.handlers:
            if (
                found is not None
                or not isinstance(handler, ServiceHandler)
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
    ids = tracing.ids()  # None at once while tracing is off
    if ids is not None:
        record.trace_id, record.span_id = ids
    return record


def formatter(fmt: LogFormat, stream: TextIO) -> logging.Formatter:
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    return JsonFormatter() if use_json else TextFormatter()


def cannot_start(reason: str, settings: Any = None) -> None:
    """The one line a start that cannot go on writes: CRITICAL, in the log's format.

    ``settings``, when they could be read, say the format; otherwise the
    LOG_FORMAT and LOG_LEVEL variables as they stand, or the defaults.
    """
    if settings is not None:
        configure(settings.log_level, settings.log_format)
    else:
        fmt = os.environ.get("LOG_FORMAT", "auto").strip().lower()
        configure("INFO", fmt if fmt in ("auto", "json", "text") else "auto")  # type: ignore[arg-type]
    logging.getLogger("app").critical("cannot start: %s", " ".join(reason.split()))


def configure(level: str, fmt: LogFormat = "auto") -> None:
    """Send the service's and uvicorn's logs to stderr, in ``fmt``."""
    logging.setLogRecordFactory(_record_with_request_id)
    # Nothing logged shows the thread, process or calling line: skip finding
    # them for every record (the logging module's documented optimisations).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None
    handler = ServiceHandler(sys.stderr, fmt)

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, ServiceHandler)]:
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


def uvicorn_config(level: str, fmt: LogFormat = "auto") -> dict[str, Any]:
    """``logging.config.dictConfig`` for uvicorn: the service's handler from the first line.

    uvicorn applies it in each process it starts, before it logs anything:
    its own lines ("Started server process", and under several processes the
    parent's) are in the service's format too. The app's lifespan then
    configures the same again (``configure``).
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"service": {"()": f"{__name__}.ServiceHandler", "fmt": fmt}},
        "root": {"handlers": ["service"], "level": "WARNING"},
        "loggers": {
            name: {"handlers": [], "level": level, "propagate": True}
            for name in ("app", "uvicorn", "uvicorn.error")
        }
        | {"uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False}},
    }
