"""Redis Streams: a consumer group, and its state.

An entry's id is ``<milliseconds>-<sequence>`` (app.clock.parse_position reads it);
ids grow with each entry added, and compare as the pairs of numbers do.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import ResponseError


async def create_group(client: Redis, stream: str, group: str) -> bool:
    """Create ``group`` reading ``stream`` from its first entry; False if it exists.

    The stream is created too if it does not exist yet: entries added before
    any worker ran are read as well.
    """
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as e:
        if not str(e).startswith("BUSYGROUP"):
            raise
        return False
    return True


@dataclass(frozen=True)
class GroupStats:
    pending: int  # read by a consumer, not acknowledged yet
    lag: int | None  # not read yet; None when Redis cannot tell (entries deleted meanwhile)
    consumers: int


async def group_stats(client: Redis, stream: str, group: str) -> GroupStats | None:
    """The group's state (``XINFO GROUPS``); None if the stream or the group does not exist."""
    try:
        groups = await client.xinfo_groups(stream)
    except ResponseError as e:
        if "no such key" in str(e):
            return None
        raise
    for info in groups:
        name = info["name"]
        if (name.decode() if isinstance(name, bytes) else name) == group:
            lag = info.get("lag")
            return GroupStats(
                int(info["pending"]), None if lag is None else int(lag), int(info["consumers"])
            )
    return None
