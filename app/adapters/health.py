"""Whether the service's dependencies answer: what both processes' ``/ready`` ask.

Each check answers within ``CHECK_TIMEOUT``, however the dependency hangs:
``ok``, ``off`` (not configured), or ``error: <why>``. The API and the worker
name them alike (``database``, ``replica``, ``redis``, ``nats``) and judge them
their own way: what the API can do without, the worker may not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from app import outages, tracing
from app.adapters import reads
from app.adapters.jetstream import JetStream

CHECK_TIMEOUT = 1.0  # seconds: a dependency slower than this counts as down


async def _timed(check: Awaitable[object]) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await check
    except Exception as e:
        return f"error: {type(e).__name__}"
    return "ok"


async def database(engine: AsyncEngine | None) -> str:
    return "off" if engine is None else await _timed(reads.ping(engine))


async def redis(client: Redis | None) -> str:
    if client is None:
        return "off"
    state = await _timed(client.ping())
    if state == "ok":
        outages.succeeded("redis")
    else:
        outages.failed("redis", state.removeprefix("error: "))
    return state


async def nats(jetstream: JetStream | None) -> str:
    """NATS: connected, or connecting now (a process connects when it first needs it)."""
    if jetstream is None:
        return "off"
    state = await _timed(jetstream.context())
    return state if state != "ok" or jetstream.connected else "error: not connected"


async def check_all(
    engine: AsyncEngine | None,
    client: Redis | None,
    jetstream: JetStream | None,
    replica: AsyncEngine | None = None,
) -> dict[str, str]:
    """Every check at once, so that the answer comes within CHECK_TIMEOUT; quietly (a probe)."""
    with tracing.quiet():
        found = await asyncio.gather(
            database(engine), database(replica), redis(client), nats(jetstream)
        )
    return dict(zip(("database", "replica", "redis", "nats"), found, strict=True))
