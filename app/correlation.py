"""Which request a piece of work belongs to, for logs and events.

The HTTP middleware sets the request id for each request; the message bus
sets it, while it handles an event, to the id the event was raised under, so
that everything a request causes, in this process or later in the relay,
carries the id of that request.
"""

import random
import re
from contextvars import ContextVar

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
# The Idempotency-Key of the write at hand, if it came with one: the ledger keeps it.
idempotency_key: ContextVar[str | None] = ContextVar("idempotency_key", default=None)

# What a request id given by a client or proxy may look like; anything else is
# replaced rather than echoed into logs and headers.
_ACCEPTABLE = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")


def new_id() -> str:
    # 128 random bits, as many as uuid4().hex has. A request id tells requests
    # apart in logs; it guards nothing, so it needs no system call per request
    # (each process's generator is seeded from the OS when it starts).
    return f"{random.getrandbits(128):032x}"


def accept(value: bytes | None) -> str:
    """``value`` if it is a usable request id, else a new one."""
    if value is not None and _ACCEPTABLE.fullmatch(value):
        return value.decode("ascii")
    return new_id()
