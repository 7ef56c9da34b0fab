"""The service's log lines: one JSON object each, in the order they were logged."""

import asyncio
import io
import json
import logging
import sys
import traceback
from collections.abc import Iterator

import pytest

from app import correlation, logs


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    captured = io.StringIO()
    monkeypatch.setattr(sys, "stderr", captured)
    logs.configure("INFO", "json")
    yield captured
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logs.ServiceHandler)]:
        root.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_request_lines_of_one_turn_are_written_at_its_end_in_order(
    stderr: io.StringIO,
) -> None:
    requests = logging.getLogger(logs.REQUESTS)
    token = correlation.request_id.set("req-7")
    try:
        requests.info("GET /a 200", extra={"status": 200, "route": "/a"})
        requests.info("GET /b 404", extra={"status": 404, "route": "/b"})
    finally:
        correlation.request_id.reset(token)
    assert stderr.getvalue() == ""  # not yet: at the end of this turn
    await asyncio.sleep(0)
    written = lines(stderr)
    assert [line["message"] for line in written] == ["GET /a 200", "GET /b 404"]
    first = written[0]
    assert first["level"] == "INFO"
    assert first["logger"] == logs.REQUESTS
    assert first["request_id"] == "req-7"
    assert (first["status"], first["route"]) == (200, "/a")
    assert str(first["time"]).endswith("+00:00")


async def test_any_other_line_is_written_at_once_after_the_request_lines_before_it(
    stderr: io.StringIO,
) -> None:
    logging.getLogger(logs.REQUESTS).info("GET /a 200")
    logging.getLogger("app.main").info("stopped")
    assert [line["message"] for line in lines(stderr)] == ["GET /a 200", "stopped"]
    assert lines(stderr)[1]["request_id"] == "-"


def test_an_exception_is_written_with_its_traceback(stderr: io.StringIO) -> None:
    try:
        raise ValueError("no such batch")
    except ValueError:
        logging.getLogger("app.worker").exception("could not apply")
    (line,) = lines(stderr)
    assert line["level"] == "ERROR"
    assert "ValueError: no such batch" in str(line["exc_info"])


def test_a_traceback_logged_as_a_message_is_a_field_unless_its_error_was_said(
    stderr: io.StringIO,
) -> None:
    # As uvicorn logs a lifespan's failure: the whole traceback as the message.
    def failure(error: Exception) -> str:
        try:
            raise error
        except Exception:
            return traceback.format_exc()

    uvicorn = logging.getLogger("uvicorn.error")
    uvicorn.error(failure(ValueError("unforeseen")))
    said = RuntimeError("the database is not migrated")
    logs.said(said)
    uvicorn.error(failure(said))
    uvicorn.error("Application startup failed. Exiting.")

    unforeseen, failed = lines(stderr)
    assert unforeseen["message"] == "ValueError: unforeseen"
    assert str(unforeseen["exc_info"]).startswith("Traceback (most recent call last):")
    assert failed["message"] == "Application startup failed. Exiting."


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_a_request_line_is_the_same_written_directly_or_through_a_record(
    stderr: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As deployed, the service's handler is the only one: the test runner's own
    # handlers on the root logger are left out of the request lines' way.
    requests = logging.getLogger(logs.REQUESTS)
    (ours,) = [h for h in logging.getLogger().handlers if isinstance(h, logs.ServiceHandler)]
    monkeypatch.setattr(requests, "handlers", [ours])
    monkeypatch.setattr(requests, "propagate", False)
    fields = {"method": "GET", "path": "/a%20b", "status": 200, "duration_ms": 1.25}
    token = correlation.request_id.set("req-9")
    try:
        logs.request_line("GET /a%20b 200 1.2ms", fields)  # straight from the fields
        captured = _Records()
        requests.addHandler(captured)  # another handler: now it takes a record
        logs.request_line("GET /a%20b 200 1.2ms", fields)
    finally:
        correlation.request_id.reset(token)
    await asyncio.sleep(0)
    direct, through_record = lines(stderr)
    assert str(direct.pop("time")).endswith("+00:00")
    assert str(through_record.pop("time")).endswith("+00:00")
    assert list(direct.items()) == list(through_record.items())  # in the same order
    assert direct["message"] == "GET /a%20b 200 1.2ms"
    assert direct["request_id"] == "req-9"
    (record,) = captured.records
    assert record.getMessage() == "GET /a%20b 200 1.2ms"
    assert record.__dict__["status"] == 200


def test_a_request_line_is_text_when_the_format_is_text(
    stderr: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = io.StringIO()
    monkeypatch.setattr(sys, "stderr", text)
    logs.configure("INFO", "text")
    logs.request_line("GET /a 200 1.0ms", {"status": 200})
    (line,) = text.getvalue().splitlines()
    assert line.endswith(" INFO app.requests [-] GET /a 200 1.0ms")
