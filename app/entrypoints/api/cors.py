"""CORS for the pages of the origins in ``CORS_ALLOW_ORIGINS``: Starlette's middleware.

A preflight is answered here, before any route, so it needs no token; a
refused one is a problem like any other error. The scripts of an allowed
origin may read the headers a caller follows: ``Location`` first.
"""

from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp

from app.adapters.read_source import CONSISTENCY_TOKEN
from app.entrypoints.api import problems
from app.entrypoints.api.idempotency import HEADER as IDEMPOTENCY_KEY
from app.entrypoints.api.idempotency import REPLAYED
from app.entrypoints.api.middleware import HEADER as REQUEST_ID
from app.entrypoints.api.problems import problem

METHODS = ("GET", "HEAD", "POST", "PATCH")
HEADERS = ("Authorization", "Content-Type", IDEMPOTENCY_KEY, REQUEST_ID)
EXPOSED = (
    "Location",
    "Link",
    CONSISTENCY_TOKEN,
    "Retry-After",
    REPLAYED,
    REQUEST_ID,
    "WWW-Authenticate",
    "Allow",
)
MAX_AGE = 600  # seconds a browser may keep a preflight's answer


class Cors(CORSMiddleware):
    def __init__(self, app: ASGIApp, origins: Sequence[str]) -> None:
        super().__init__(
            app,
            allow_origins=origins,
            allow_methods=METHODS,
            allow_headers=HEADERS,
            expose_headers=EXPOSED,
            max_age=MAX_AGE,
        )

    def preflight_response(self, request_headers: Headers) -> Response:
        answer = super().preflight_response(request_headers)
        if answer.status_code != 400:
            return answer
        # Starlette's refusal is a line of text ("Disallowed CORS origin"): made a problem.
        kept = {
            k: v for k, v in answer.headers.items() if k not in ("content-length", "content-type")
        }
        return problem(problems.CROSS_ORIGIN_REFUSED, bytes(answer.body).decode(), kept)
