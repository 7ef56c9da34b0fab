"""What a log line costs: the request line as the service writes it, and a record's.

The service writes one line per request. Where only its JSON handler would
see it (as deployed), ``logs.request_line`` builds it from its fields with
no LogRecord; any other record goes through the JSON formatter
(python-json-logger's). This prints the microseconds per line of each way,
and of the formatter alone, best of five runs, in one process:

    .venv/bin/python bench/log_lines.py
"""

from __future__ import annotations

import io
import logging
import timeit

from app import correlation, logs

FIELDS = {"method": "POST", "path": "/allocate", "status": 202, "duration_ms": 3.25}
LINES = 20_000


def best(work: object, number: int = LINES) -> float:
    """Microseconds per call of ``work``, the best of five runs."""
    runs = timeit.repeat(work, number=number, repeat=5)  # type: ignore[arg-type]
    return min(runs) / number * 1e6


def main() -> None:
    stream = io.StringIO()
    logs.configure("INFO", "json")
    handler = next(h for h in logging.getLogger().handlers if isinstance(h, logs.ServiceHandler))
    handler.stream = stream
    correlation.request_id.set("36415c1a7968e29cb8d1697469678304")
    requests = logging.getLogger(logs.REQUESTS)

    def direct() -> None:
        logs.request_line("POST /allocate 202 3.2ms", FIELDS)
        handler.flush()

    def through_a_record() -> None:
        requests.info("POST /allocate 202 3.2ms", extra=FIELDS)
        handler.flush()

    record = requests.makeRecord(
        logs.REQUESTS, logging.INFO, __file__, 0, "POST /allocate 202 3.2ms", (), None
    )
    record.__dict__.update(FIELDS)
    formatter = logs.JsonFormatter()

    print(f"request line, from its fields: {best(direct):6.2f} us")
    print(f"request line, as a LogRecord:  {best(through_a_record):6.2f} us")
    print(f"the JSON formatter alone:      {best(lambda: formatter.format(record)):6.2f} us")


if __name__ == "__main__":
    main()
