"""How failures reach clients: each exception's problem type (app.entrypoints.http.problems).

Domain and service-layer exceptions map to problem types here and nowhere
else. A database that cannot be reached is a 503 with ``Retry-After``, and
nothing of the error itself: no SQL, no trace.
"""

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Match

from app import outages
from app.adapters.database_errors import ConcurrencyError, DatabaseUnavailable
from app.domain.model import DuplicateBatch, HoldEnded, LineConflict, VersionMismatch
from app.entrypoints.http import problems
from app.entrypoints.http.problems import ProblemType, Refusal, problem
from app.service_layer.handlers import InvalidSku, UnknownBatch, UnknownLine
from app.service_layer.holds import HoldMismatch, HoldShort, UnknownHold

logger = logging.getLogger(__name__)

RETRY_AFTER = 2  # seconds: about what a restarted database takes to accept connections

# The domain's refusals: the same request would get the same answer again.
PROBLEM_OF: dict[type[Exception], ProblemType] = {
    InvalidSku: problems.INVALID_SKU,
    UnknownBatch: problems.UNKNOWN_BATCH,
    DuplicateBatch: problems.BATCH_EXISTS,
    LineConflict: problems.LINE_EXISTS,
    UnknownLine: problems.UNKNOWN_LINE,
    VersionMismatch: problems.VERSION_MISMATCH,
    UnknownHold: problems.UNKNOWN_HOLD,
    HoldShort: problems.HOLD_SHORT,
    HoldMismatch: problems.HOLD_EXISTS,
    HoldEnded: problems.HOLD_ENDED,
}


def install(app: FastAPI) -> None:
    for exc_type, kind in PROBLEM_OF.items():
        app.add_exception_handler(exc_type, _domain_error(kind))
    app.add_exception_handler(ConcurrencyError, _conflict)
    app.add_exception_handler(DatabaseUnavailable, _unavailable)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http_error)
    # Starlette's outermost middleware answers with this, then lets the server log the error.
    app.add_exception_handler(Exception, _failed)


def _domain_error(kind: ProblemType) -> Any:
    async def handler(_: Request, exc: Exception) -> Response:
        return problem(kind, str(exc), **getattr(exc, "members", {}))

    return handler


async def _conflict(_: Request, exc: Exception) -> Response:
    logger.warning("write given up after repeated conflicts: %s", exc)
    return problem(problems.WRITE_COLLIDED)


async def _unavailable(request: Request, exc: Exception) -> Response:
    # Logged once an outage (app.outages); each request's own line shows its 503.
    outages.failed("database", str(exc))
    return problem(problems.DATABASE_UNAVAILABLE, headers={"Retry-After": str(RETRY_AFTER)})


async def _failed(_: Request, exc: Exception) -> Response:
    return problem(problems.INTERNAL_ERROR)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if isinstance(exc, Refusal):
        return problem(exc.kind, str(exc.detail), exc.headers)
    # FastAPI's 400s for a JSON body it could not read: invalid input like any other.
    if isinstance(exc.__cause__, UnicodeDecodeError):
        return problem(
            problems.INVALID_JSON, "The request body is not valid JSON (it is not UTF-8 text)"
        )
    if isinstance(exc.__cause__, RecursionError):
        return problem(
            problems.INVALID_JSON, "The request body is not valid JSON (it is nested too deep)"
        )
    if exc.status_code == 404:
        redirect = _without_trailing_slash(request)
        if redirect is not None:
            return redirect
        return problem(problems.NOT_FOUND, headers=exc.headers)
    if exc.status_code == 405:
        return problem(
            problems.METHOD_NOT_ALLOWED,
            f"{request.method} is not allowed here; the Allow header lists the methods that are",
            {**(exc.headers or {}), "Allow": _allowed_methods(request)},
        )
    return problem(problems.of_status(exc.status_code), str(exc.detail), exc.headers)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _without_trailing_slash(request: Request) -> RedirectResponse | None:
    """A redirect from ``/x/`` to ``/x`` where ``/x`` is a route, to a relative ``Location``.

    Starlette's own redirect names the host the client sent (``Host``), which
    would send a caller wherever a forged header says; a path alone stays on
    the server the client reached.
    """
    path: str = request.scope["path"]
    if not path.endswith("/") or path == "/":
        return None
    scope = {**request.scope, "path": path.rstrip("/")}
    if not any(route.matches(scope)[0] is not Match.NONE for route in request.app.router.routes):
        return None
    # The path as received (a proxy's prefix included), escapes and all: what
    # was decoded must not become a new URL.
    raw: bytes = request.scope.get("raw_path") or path.encode()
    target = raw.rstrip(b"/").decode("latin-1")
    query = request.scope.get("query_string", b"").decode("latin-1")
    return RedirectResponse(target + (f"?{query}" if query else ""), status_code=307)


def _allowed_methods(request: Request) -> str:
    # Starlette names only the first route that matched the path; GET and PATCH
    # /batches/{ref} are two routes, and Allow must list both. HEAD is every
    # GET's (app.entrypoints.http.middleware.Head).
    routes = request.app.router.routes
    allowed = {
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    }
    if "GET" in allowed:
        allowed.add("HEAD")
    return ", ".join(method for method in _METHODS if method in allowed)


def is_json(content_type: str | None) -> bool:
    """``application/json``, or a JSON-based type (``application/...+json``), as FastAPI reads."""
    if content_type is None:
        return False
    main, _, sub = content_type.partition(";")[0].strip().lower().partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


async def _invalid(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    # FastAPI's strict_content_type leaves a body not declared JSON unparsed,
    # which fails its model: a write must be sent as JSON.
    body_failed = any(e.get("loc", ("",))[0] == "body" for e in errors)
    if body_failed and not is_json(request.headers.get("content-type")):
        return problem(problems.NOT_JSON_CONTENT)
    if errors and errors[0].get("type") == "json_invalid":
        position = errors[0].get("loc", ("body", "?"))[-1]
        return problem(
            problems.INVALID_JSON, f"The request body is not valid JSON (at character {position})"
        )
    fields = [_field_error(e) for e in errors] or [{"loc": [], "message": "Invalid request"}]
    first = fields[0]
    where = ".".join(str(part) for part in first["loc"])
    detail = f"{where}: {first['message']}" if where else str(first["message"])
    return problem(problems.INVALID_INPUT, detail, errors=fields)


def _field_error(e: dict[str, Any]) -> dict[str, Any]:
    # Where, and what is wrong: pydantic's "input" and "ctx" would echo back
    # whatever the client sent, at any size.
    loc: Sequence[str | int] = e.get("loc", ())
    return {"loc": list(loc), "message": str(e.get("msg", ""))}
