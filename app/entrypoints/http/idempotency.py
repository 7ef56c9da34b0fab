"""``Idempotency-Key`` on the writes: a repeat gets the first answer, and no second command.

Policy:
- The key is reserved in the database before the command runs. The table's
  primary key makes one request its owner, across every API process.
- A repeat with the same method, path, If-Match and validated body gets the recorded
  status, body and ``Location``, the headers the route reads from its
  ``Location`` (``Link``, ``X-Consistency-Token``), and
  ``Idempotent-Replayed: true``. The same key with another body, or on
  another route, is a 422.
- A repeat that arrives while the first is still running waits for its
  answer, up to ``WAIT`` seconds, and replays it; after that it is a 409 with
  ``Retry-After``.
- Recorded are successes and the domain's refusals (``errors.PROBLEM_OF``: 400,
  404, 409), which the same request would get again. A 503, a 500 or a 409
  for writes that kept colliding is not: the reservation is released and the
  same key may be sent again.
- A process that dies after the command and before recording its answer
  leaves a reservation with no answer. Once it is ``STALE_AFTER`` old, the
  next repeat runs the command again, which is harmless: the commands are
  idempotent themselves (the same line allocated again, or an identical batch
  added again, changes nothing), so the repeat gets the answer the first
  would have had.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Header, Request, Response
from pydantic import AfterValidator, BaseModel, WithJsonSchema

from app import correlation
from app.adapters.database_errors import DatabaseUnavailable, is_unavailable, unavailable_reason
from app.adapters.idempotency import (
    AbstractIdempotencyKeys,
    Answer,
    Existing,
    Reserved,
)
from app.backoff import Backoff
from app.entrypoints.http import problems
from app.entrypoints.http.errors import PROBLEM_OF
from app.entrypoints.http.problems import problem

logger = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
WAIT = 5.0  # seconds a repeat waits for the first request's answer
RETRY_AFTER = 1  # seconds, after a repeat gave up waiting
MAX_KEY_LENGTH = 255
# How often a repeat looks for the first request's answer: 10 ms, doubling to 200 ms.
_POLL = Backoff(base=0.01, maximum=0.2)
# Printable ASCII; a space at either end would not survive an HTTP header.
_PATTERN = rf"^[!-~]([ -~]{{0,{MAX_KEY_LENGTH - 2}}}[!-~])?$"
_KEY = re.compile(_PATTERN)


def other_route(request: str) -> str:
    return f"This Idempotency-Key was already used for {request}; use a new key for a new request"


DESCRIPTION = (
    "Makes the write safe to send again: a repeat with the same key and body gets the "
    "first answer (status, body, `Location` and its `Link`, and `Idempotent-Replayed: true`) "
    "and does nothing twice. Another body or route with the key is a 422; a repeat while the first "
    "is still running waits for its answer, or after a few seconds is a 409 with "
    "`Retry-After`. 1 to 255 printable ASCII characters, e.g. a UUID; kept for "
    "`IDEMPOTENCY_TTL` (a day by default)."
)


def _printable_ascii(value: str | None) -> str | None:
    if value is not None and not _KEY.fullmatch(value):
        raise ValueError(
            f"must be 1 to {MAX_KEY_LENGTH} printable ASCII characters, with no space at either end"
        )
    return value


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=HEADER,
        description=DESCRIPTION,
        # No example: "Try it out" would send the same key with every body
        # a person tries, and each after the first would be a 422.
    ),
    # A string, optional as the parameter is: not "string or null", which no
    # header can be, and which /docs shows as `string | (string | null)`.
    WithJsonSchema(
        {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": _PATTERN}
    ),
    AfterValidator(_printable_ascii),
]

Work = Callable[[], Awaitable[Response]]
HeadersOf = Callable[[str], dict[str, str]]  # a Location's headers
T = TypeVar("T")


def fingerprint(request: str, body: BaseModel) -> str:
    """sha256 of the request (method, path, If-Match) and the validated body's canonical JSON."""
    # Fields in the model's order, defaults filled in: one text for one meaning.
    canonical = body.model_dump_json()
    return hashlib.sha256(f"{request}\n{canonical}".encode()).hexdigest()


class Idempotency:
    def __init__(self, keys: AbstractIdempotencyKeys, wait: float = WAIT) -> None:
        self._keys = keys
        self._wait = wait

    async def __call__(
        self,
        key: str | None,
        request: Request,
        body: BaseModel,
        work: Work,
        *,
        headers_of: HeadersOf,
    ) -> Response:
        """``work()``'s answer, or, for a key seen before, the answer it got then.

        ``headers_of`` gives a recorded ``Location``'s headers, as ``work`` sent them.
        """
        if key is None:
            return await work()
        route = f"{request.method} {request.scope['route'].path}"
        # The path as sent: PATCH /batches/a and /batches/b are two requests; and
        # the If-Match: a change at another version is another request.
        target = f"{request.method} {request.url.path}"
        if "if-match" in request.headers:  # (keys of before, without it, keep their print)
            target += f" If-Match: {request.headers['if-match']}"
        claimed = await self._claim(key, route, fingerprint(target, body), headers_of)
        if isinstance(claimed, Response):
            return claimed
        token = correlation.idempotency_key.set(key)  # the ledger keeps it with the change
        try:
            response = await work()
        except Exception as exc:
            if type(exc) not in PROBLEM_OF:
                await self._release(key, claimed)
                raise
            # The answer the app gives this refusal, from its own handler.
            response = await request.app.exception_handlers[type(exc)](request, exc)
        except BaseException:
            await self._release(key, claimed)
            raise
        finally:
            correlation.idempotency_key.reset(token)
        if response.status_code >= 500:
            await self._release(key, claimed)
        else:
            await self._record(key, claimed, response)
        return response

    async def _claim(
        self, key: str, route: str, digest: str, headers_of: HeadersOf
    ) -> Reserved | Response:
        deadline = time.monotonic() + self._wait
        tries = 0
        while True:
            found = await _translated(self._keys.reserve(key, route, digest))
            if isinstance(found, Reserved):
                return found
            if found is None:
                continue  # the first request gave the key back just now
            refused = _mismatch(found, route, digest)
            if refused is not None:
                return refused
            if found.answer is not None:
                return _replay(found.answer, headers_of)
            tries += 1
            pause = _POLL.after(tries)
            if time.monotonic() + pause > deadline:
                retry = {"Retry-After": str(RETRY_AFTER)}
                return problem(problems.REQUEST_IN_PROGRESS, headers=retry)
            await asyncio.sleep(pause)

    async def _record(self, key: str, reservation: Reserved, response: Response) -> None:
        location = response.headers.get("location")
        answer = Answer(response.status_code, bytes(response.body).decode(), location)
        try:
            await self._keys.record(key, reservation, answer)
        except Exception as e:
            # The work is done and its answer goes out; a repeat after
            # STALE_AFTER runs the (idempotent) command again.
            logger.warning("could not record the answer to Idempotency-Key %r: %s", key, e)

    async def _release(self, key: str, reservation: Reserved) -> None:
        try:
            await self._keys.release(key, reservation)
        except Exception as e:
            logger.warning("could not release Idempotency-Key %r: %s", key, e)


def _mismatch(found: Existing, route: str, digest: str) -> Response | None:
    if found.request != route:
        return problem(problems.KEY_REUSED, other_route(found.request))
    if found.fingerprint != digest:
        return problem(problems.KEY_REUSED)
    return None


def _replay(answer: Answer, headers_of: HeadersOf) -> Response:
    headers = {REPLAYED: "true"}
    if answer.location is not None:
        headers.update(headers_of(answer.location))
    # Only answers and the domain's refusals are recorded: every error among them a problem.
    media_type = problems.MEDIA_TYPE if answer.status >= 400 else "application/json"
    return Response(answer.body, status_code=answer.status, media_type=media_type, headers=headers)


async def _translated(call: Awaitable[T]) -> T:
    try:
        return await call
    except Exception as e:
        if is_unavailable(e):
            raise DatabaseUnavailable(unavailable_reason(e)) from e
        raise
