"""What wraps every request: its context (request id, log line, metrics), HEAD, a body limit.

Plain ASGI middleware rather than ``BaseHTTPMiddleware``: they add nothing
to a request but a header, a log record and two metric updates.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import correlation, logs, metrics
from app.entrypoints.http import problems
from app.entrypoints.http.problems import Refusal, problem

logger = logging.getLogger(logs.REQUESTS)

HEADER = "X-Request-ID"
_HEADER_KEY = HEADER.lower().encode()


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v for k, v in scope["headers"] if k == _HEADER_KEY), None)
        request_id = correlation.accept(incoming)
        id_bytes = request_id.encode()
        token = correlation.request_id.set(request_id)
        status = 500  # unless a response starts
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (_HEADER_KEY, id_bytes)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("route")
            # The route's template, not the path: one series per route, not per id.
            template = getattr(route, "path", "unmatched")
            method = scope["method"]
            metrics.request_answered(method, template, status, seconds)
            if logger.isEnabledFor(logging.INFO):
                _log_request(scope, method, template, status, seconds)
            correlation.request_id.reset(token)


def _log_request(scope: Scope, method: str, route: str, status: int, seconds: float) -> None:
    client = scope.get("client")
    milliseconds = seconds * 1000
    path = scope["path"]
    logs.request_line(
        f"{method} {path} {status} {milliseconds:.1f}ms",
        {
            "method": method,
            "path": path,
            "route": route,
            "status": status,
            "duration_ms": round(milliseconds, 2),
            "client": client[0] if client else None,
        },
    )


# The body not read stays on the connection: closed, it cannot be taken for a request.
_CLOSE = {"Connection": "close"}


class BodyLimit:
    """413 for a request body over ``max_bytes``, declared or streamed.

    A declared ``Content-Length`` over the limit is refused before the body
    is read; a chunked body is counted as it arrives. The connection is then
    closed (``Connection: close``).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = problem(problems.BODY_TOO_LARGE, self._message(), _CLOSE)
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI passes an HTTPException from reading the body through.
                    raise Refusal(problems.BODY_TOO_LARGE, self._message(), _CLOSE)
            return message

        await self.app(scope, counting_receive, send)

    def _message(self) -> str:
        return f"The request body is larger than {self.max_bytes} bytes"


class Head:
    """HEAD as the GET of the same URL: its status and headers, and no body.

    Below the routes, HEAD is GET, so that no operation is declared twice in
    /openapi.json; the log and the metrics above still say HEAD.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        as_get = {**scope, "method": "GET"}
        try:
            await self.app(as_get, receive, headers_only)
        finally:
            if "route" in as_get:  # the route it matched, for the log and the metrics above
                scope["route"] = as_get["route"]
