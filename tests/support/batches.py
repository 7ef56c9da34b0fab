"""Batches for tests that send changes through a broker: made at once, read back at the end."""

from app.config import Settings
from app.domain import commands
from tests.support.containers import running_container
from tests.support.databases import query
from tests.support.refs import random_ref

INITIAL = 1000  # every batch's quantity before a test sends anything


async def new_batches(database: str, count: int) -> list[str]:
    """``count`` batches of INITIAL units, each of a sku of its own."""
    refs = [random_ref("batch") for _ in range(count)]
    settings = Settings(database_url=database, redis_url=None, relay_enabled=False)
    async with running_container(settings) as container:
        for ref in refs:
            await container.bus().handle(
                commands.CreateBatch(ref, random_ref("sku"), INITIAL, None)
            )
    return refs


async def quantities(database: str, refs: list[str]) -> dict[str, int]:
    """Each batch's purchased quantity, as the write model has it."""
    rows = await query(
        database,
        "SELECT reference, purchased_quantity FROM batches WHERE reference = ANY(:refs)",
        refs=refs,
    )
    return {ref: qty for ref, qty in rows}
