"""The Redis client the service uses, however many parts of a process share it."""

from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError


def connect(url: str) -> Redis:
    """A client for ``url``; it connects when first used."""
    return Redis.from_url(
        url,
        socket_timeout=5,
        socket_connect_timeout=5,
        # A pooled connection that Redis closed (it restarted) is replaced and
        # the command sent again once, rather than failed: at least once, as
        # everything sent from the outbox.
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[RedisConnectionError],
    )


async def resource(url: str | None) -> AsyncIterator[Redis | None]:
    """The client for ``url`` as long as it is needed, or None without one."""
    if url is None:
        yield None
        return
    client = connect(url)
    try:
        yield client
    finally:
        await client.aclose()
