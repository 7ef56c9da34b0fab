"""Writes take JSON: a body sent as anything else, or as nothing declared, is a 415.

Checked when the route is reached, before its body is read: an unknown path
is still a 404 and a wrong method a 405, and a body that is not declared
JSON is not parsed, or guessed at, first.
"""

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from app.entrypoints.api import problems
from app.entrypoints.api.problems import problem

NOT_JSON = "The request body must be JSON, sent with Content-Type: application/json"

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def is_json(content_type: str | None) -> bool:
    """``application/json``, or a JSON-based type (``application/...+json``), as FastAPI reads."""
    if content_type is None:
        return False
    main, _, sub = content_type.partition(";")[0].strip().lower().partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


class JsonBodyRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler  # a read: nothing to check, and nothing added to its time

        async def json_only(request: Request) -> Response:
            if not is_json(request.headers.get("content-type")):
                return problem(problems.NOT_JSON_CONTENT, NOT_JSON)
            return await handler(request)

        return json_only
