"""What a connection may cost the server: uvicorn's HTTP protocol, with limits it lacks.

uvicorn bounds a request's body (the app does, app.entrypoints.http.middleware)
and an idle keep-alive connection (``timeout_keep_alive``), but neither the
head of a request on its httptools protocol, nor the time a new connection
takes to send one, nor the number of connections: ``limit_concurrency``
answers requests with a 503, and never closes an idle connection to make
room. So a client could hold a process with connections that never send a
request, or send one header line at a time, or one enormous header; with
more of them than the process has file descriptors, nobody else could
connect at all. The hostile tests (tests/e2e/test_withstands.py: 1,100 idle
sockets at a 1,024 file limit, slow and silent connections, heads over the
limit, as the Dockerfile runs the service) need what follows, and uvicorn has
no public way to it: this extends its httptools protocol class, which is not
its public API, so pyproject.toml pins uvicorn to the one version those tests
run against.

Policy, per process:
- A request's head (request line and headers) is at most ``max_header_bytes``;
  past that the answer is a 431 and the connection is closed. The bytes are
  counted as they arrive, so at most one read more than the limit is held;
  a head that arrived whole in one read is measured once parsed, before the
  app sees it.
- A connection has ``header_timeout`` seconds to send each request's head,
  from when it opened or its last answer went out; then it is closed. (Idle
  keep-alive connections go sooner: uvicorn's ``timeout_keep_alive``.)
- At most ``max_connections`` connections are open: a new one past the limit
  closes the connection that has been idle longest (waiting for a head); if
  every connection is in a request, the new one gets a 503 and is closed.
  The limit stays below the open-file limit, so the process never runs out
  of descriptors because of its clients.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.entrypoints.http import problems
from app.entrypoints.http.problems import ProblemType

logger = logging.getLogger(__name__)

TOO_MANY = "Too many connections"
SWEEP_EVERY = 1.0  # seconds between looks for heads that took too long
WARN_EVERY = 60.0  # seconds between log lines about shed connections


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 32768
    header_timeout: float = 10.0
    max_connections: int | None = None  # None: from the open-file limit


def connection_limit(open_files: int) -> int:
    """Connections to allow under an open-file limit: what the rest of the process keeps.

    The rest is the database pools, Redis, the log, the listening socket:
    an eighth of the limit, and never fewer than 128 descriptors.
    """
    return max(16, open_files - max(128, open_files // 8))


def _refusal(kind: ProblemType, detail: str) -> bytes:
    """The whole answer, written on the connection: the problem the app would write."""
    body = orjson.dumps(problems.body(kind, detail))
    status = f"{kind.status} {HTTPStatus(kind.status).phrase}".encode()
    return b"".join(
        [
            b"HTTP/1.1 " + status + b"\r\n",
            b"content-type: " + problems.MEDIA_TYPE.encode() + b"\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
    )


class _Connections:
    """The open connections of this process, the idle ones in the order they went idle."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        if limits.max_connections is not None:
            self.limit = limits.max_connections
        else:
            self.limit = connection_limit(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        self.open: set[GuardedHttpToolsProtocol] = set()
        # Waiting for a request's head, since when: insertion order is age order.
        self.idle: dict[GuardedHttpToolsProtocol, float] = {}
        self._sweeping = False
        self._shed = 0
        self._warned_at = -WARN_EVERY

    def opened(self, connection: GuardedHttpToolsProtocol) -> bool:
        """Count a new connection in; False if there is no room for it."""
        if not self._sweeping:
            self._sweeping = True
            connection.loop.call_later(SWEEP_EVERY, self._sweep, connection.loop)
        self.open.add(connection)
        self.idle[connection] = time.monotonic()
        if len(self.open) <= self.limit:
            return True
        oldest = next(iter(self.idle))
        self._warn()
        if oldest is connection:  # nobody idle to make room
            self.closed(connection)
            return False
        self.closed(oldest)
        oldest.transport.abort()
        return True

    def busy(self, connection: GuardedHttpToolsProtocol) -> None:
        self.idle.pop(connection, None)

    def waiting(self, connection: GuardedHttpToolsProtocol) -> None:
        if connection in self.open:
            self.idle.pop(connection, None)
            self.idle[connection] = time.monotonic()

    def closed(self, connection: GuardedHttpToolsProtocol) -> None:
        self.open.discard(connection)
        self.idle.pop(connection, None)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        deadline = time.monotonic() - self.limits.header_timeout
        for connection, since in list(self.idle.items()):
            if since > deadline:
                break
            self.closed(connection)
            connection.transport.close()
        loop.call_later(SWEEP_EVERY, self._sweep, loop)

    def _warn(self) -> None:
        self._shed += 1
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            logger.warning(
                "%d connections open, the most this process takes: closing the longest idle "
                "to make room (%d so far)",
                len(self.open),
                self._shed,
            )


_connections: _Connections | None = None


def _registry(limits: Limits) -> _Connections:
    global _connections
    if _connections is None or _connections.limits != limits:
        _connections = _Connections(limits)
    return _connections


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, held to the limits above."""

    def __init__(self, *args: Any, limits: Limits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits
        self._connections = _registry(limits)
        self._head_bytes = 0
        self._in_head = True  # no request's head completed since the last answer
        self._head_refused = False  # a head found too large once parsed

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self._connections.opened(self):
            transport.write(_refusal(problems.TOO_MANY_CONNECTIONS, TOO_MANY))
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.closed(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        counting = self._in_head
        if counting:
            self._head_bytes += len(data)
        super().data_received(data)
        too_large = self._head_refused or (
            counting and self._in_head and self._head_bytes > self._limits.max_header_bytes
        )
        if too_large and not self.transport.is_closing():
            self._connections.closed(self)
            self.transport.write(
                _refusal(
                    problems.HEADERS_TOO_LARGE,
                    f"The request's headers are larger than {self._limits.max_header_bytes} bytes",
                )
            )
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._connections.busy(self)
        if self._head_refused:  # a request pipelined behind the refused one
            return
        # The head came in fewer reads than the counting above could catch.
        head = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if head > self._limits.max_header_bytes:
            self._head_refused = True  # no request starts: data_received answers 431
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._head_refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._head_refused:
            super().on_message_complete()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)  # a request that already sent its head starts now
        super().on_response_complete()
        if not pipelined:
            self._in_head = True
            self._head_bytes = 0
            self._connections.waiting(self)
