"""Schemathesis hooks for tests/e2e/test_fuzz.py, for its runs in-process and on the command line.

A generated ``Idempotency-Key`` is short ("0", "!") and comes again and again,
with other bodies and on other routes: the service rightly answers that reuse
with a 422, which a request that is valid on its own does not deserve. Each
valid key gets a suffix that makes it a key of its own; an invalid one is sent
as drawn, for the service to refuse.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import schemathesis

from app.entrypoints.http.idempotency import HEADER, MAX_KEY_LENGTH

_VALID = re.compile(rf"^[!-~]([ -~]{{0,{MAX_KEY_LENGTH - 2}}}[!-~])?$")
_SUFFIX = 33  # "-" and a uuid4's 32 hex digits


def fresh_idempotency_keys(ctx: Any, case: schemathesis.Case[Any], **kwargs: Any) -> None:
    if case.headers is None:
        return
    key = case.headers.get(HEADER)
    if isinstance(key, str) and _VALID.fullmatch(key):
        kept = key[: MAX_KEY_LENGTH - _SUFFIX]
        case.headers[HEADER] = f"{kept}-{uuid.uuid4().hex}"


# Loaded as SCHEMATHESIS_HOOKS by the command-line runs.
schemathesis.hook("before_call")(fresh_idempotency_keys)
