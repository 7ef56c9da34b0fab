"""The service's log lines: one JSON object each, in the order they were logged."""

import asyncio
import io
import json
import logging
import sys
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
    for handler in [h for h in root.handlers if isinstance(h, logs._Handler)]:
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
