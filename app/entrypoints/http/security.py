"""Who may write, and who may read the metrics: bearer tokens, checked before anything else.

With API_TOKEN set, every write (a POST, PUT, PATCH or DELETE that a route
takes) wants it as ``Authorization: Bearer <token>``. The check is ASGI
middleware, ahead of the body limit and of FastAPI: a caller that is not
known gets its 401 before a byte of the body is read, whatever the body (not
JSON, too large, of the wrong type). Reads stay open; so do CORS preflights
(OPTIONS).
Without API_TOKEN writes are open too, which the service allows outside
development only when told to (``Settings.check_api``).

With METRICS_TOKEN set, GET /metrics wants that token the same way.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from fastapi import Request
from fastapi.security import HTTPBearer
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from app.entrypoints.http import problems
from app.entrypoints.http.problems import ProblemType, problem

# The methods that change something.
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# What /openapi.json and /docs ("Authorize") show of the writer's token; the
# check itself is WriterToken's.
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="API token",
    description="The service's `API_TOKEN`, when it has one set. Only writes need it.",
)


Refused = tuple[ProblemType, str, str | None]


def refusal(authorization: bytes | None, token: bytes) -> Refused | None:
    """Why ``authorization`` (the header's value) does not carry ``token``, if it does not.

    The problem's type and detail, and the RFC 6750 error code for the challenge.
    """
    missing = problems.TOKEN_MISSING, problems.TOKEN_MISSING.detail, None
    if authorization is None:
        return missing
    scheme, _, credentials = authorization.partition(b" ")
    if scheme.lower() != b"bearer" or not credentials.strip():
        return missing
    # Constant time: how much of a guess was right must not show in the timing.
    if not secrets.compare_digest(credentials.strip(), token):
        return problems.TOKEN_INVALID, problems.TOKEN_INVALID.detail, "invalid_token"
    return None


def challenge(error: str | None) -> str:
    value = 'Bearer realm="allocation"'
    return value if error is None else f'{value}, error="{error}"'


def unauthorized(refused: Refused, **headers: str) -> Response:
    kind, detail, code = refused
    return problem(kind, detail, {"WWW-Authenticate": challenge(code), **headers})


class WriterToken:
    """401 for a write without the API's token, before the body is read.

    A write is a request a write route takes (``routes``, the app's). Any
    other gets the app's own answer, a 404 or 405 that reads no body either.
    """

    def __init__(self, app: ASGIApp, token: str, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self._token = token.encode()
        self._routes = routes
        self._writes: list[BaseRoute] | None = None

    def _is_write(self, scope: Scope) -> bool:
        if scope["method"] not in WRITES:
            return False
        if self._writes is None:  # the app's routes are all there by its first request
            self._writes = [r for r in self._routes if WRITES & getattr(r, "methods", set())]
        return any(route.matches(scope)[0] is Match.FULL for route in self._writes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._is_write(scope):
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        refused = refusal(header, self._token)
        if refused is None:
            await self.app(scope, receive, send)
            return
        # The unread body is not wanted.
        await unauthorized(refused, Connection="close")(scope, receive, send)


def metrics_refusal(request: Request, token: str) -> Response | None:
    """The 401 for a scrape without METRICS_TOKEN; None when it carries it."""
    refused = refusal(request.headers.get("authorization", "").encode() or None, token.encode())
    return None if refused is None else unauthorized(refused)
