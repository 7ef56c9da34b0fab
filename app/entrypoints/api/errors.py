"""How failures reach clients: one error body, ``{"message": ...}``, for every 4xx and 503.

Domain and service-layer exceptions map to statuses here and nowhere else. A
database that cannot be reached is a 503 with ``Retry-After``, the same body,
and nothing of the error itself: no SQL, no trace.
"""

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from app.adapters.database import ConcurrencyError, DatabaseUnavailable
from app.domain.model import DuplicateBatch, LineConflict
from app.service_layer.handlers import InvalidSku, UnknownBatch

logger = logging.getLogger(__name__)

RETRY_AFTER = 2  # seconds: about what a restarted database takes to accept connections
COLLIDED = "The write collided with concurrent writes; try again"
UNAVAILABLE = "The database is unavailable; try again shortly"

STATUS_OF: dict[type[Exception], int] = {
    InvalidSku: 400,
    UnknownBatch: 404,
    DuplicateBatch: 409,
    LineConflict: 409,
}


def install(app: FastAPI) -> None:
    for exc_type, status in STATUS_OF.items():
        app.add_exception_handler(exc_type, _domain_error(status))
    app.add_exception_handler(ConcurrencyError, _conflict)
    app.add_exception_handler(DatabaseUnavailable, _unavailable)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http_error)


def error(status: int, message: str, detail: list[dict[str, Any]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"message": message}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status)


def _domain_error(status: int) -> Any:
    async def handler(_: Request, exc: Exception) -> JSONResponse:
        return error(status, str(exc))

    return handler


async def _conflict(_: Request, exc: Exception) -> JSONResponse:
    logger.warning("write given up after repeated conflicts: %s", exc)
    return error(409, COLLIDED)


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("%s %s: database unavailable: %s", request.method, request.url.path, exc)
    response = error(503, UNAVAILABLE)
    response.headers["Retry-After"] = str(RETRY_AFTER)
    return response


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if isinstance(exc.__cause__, UnicodeDecodeError):
        # FastAPI's 400 for a JSON body that is not UTF-8: invalid input like any other.
        return error(422, "The request body is not valid JSON (it is not UTF-8 text)")
    response = error(exc.status_code, str(exc.detail))
    if exc.headers:
        response.headers.update(exc.headers)
    if exc.status_code == 405:
        response.headers["Allow"] = _allowed_methods(request)
    return response


_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _allowed_methods(request: Request) -> str:
    # Starlette names only the first route that matched the path; GET and PATCH
    # /batches/{ref} are two routes, and Allow must list both.
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    )


async def _invalid(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if errors and errors[0].get("type") == "json_invalid":
        position = errors[0].get("loc", ("body", "?"))[-1]
        return error(422, f"The request body is not valid JSON (at character {position})")
    detail = [_field_error(e) for e in errors]
    first = detail[0] if detail else {"loc": [], "msg": "Invalid request"}
    where = ".".join(str(part) for part in first["loc"])
    message = f"{where}: {first['msg']}" if where else str(first["msg"])
    return error(422, message, detail)


def _field_error(e: dict[str, Any]) -> dict[str, Any]:
    # Only location, message and type: pydantic's "input" and "ctx" would echo
    # back whatever the client sent, at any size.
    loc: Sequence[str | int] = e.get("loc", ())
    return {"loc": list(loc), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
