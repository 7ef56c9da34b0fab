"""The outbox and the processed-messages ledger, as stored; delivery passes run by hand.

The tests of event delivery prove that no event is lost when a step fails or a
server is away, so they look at the outbox and the ledger directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.adapters import tables
from app.container import Container
from tests.support.databases import query
from tests.support.polling import eventually


@dataclass(frozen=True)
class OutboxRow:
    id: str
    type: str
    payload: dict[str, Any]
    attempts: int
    last_error: str | None
    available_at: datetime
    completed_at: datetime | None

    @property
    def pending(self) -> bool:
        return self.completed_at is None


async def outbox_rows(engine: AsyncEngine, sku: str, type_: str | None = None) -> list[OutboxRow]:
    """The outbox rows of events about ``sku``, oldest first."""
    o = tables.outbox.c
    query = select(
        o.id, o.type, o.payload, o.attempts, o.last_error, o.available_at, o.completed_at
    ).where(o.sku == sku)
    if type_ is not None:
        query = query.where(o.type == type_)
    async with engine.connect() as conn:
        rows = (await conn.execute(query.order_by(o.created_at, o.id))).all()
    return [OutboxRow(**row._asdict()) for row in rows]


async def allocated_row(engine: AsyncEngine, orderid: str) -> OutboxRow:
    """The outbox row of the Allocated event of ``orderid``."""
    async with engine.connect() as conn:
        sku = await conn.scalar(
            select(tables.order_lines.c.sku).where(tables.order_lines.c.orderid == orderid)
        )
    assert sku is not None, f"order {orderid} has no line"
    rows = [
        r for r in await outbox_rows(engine, sku, "Allocated") if r.payload["orderid"] == orderid
    ]
    assert len(rows) == 1, f"{len(rows)} Allocated events for {orderid}: {rows}"
    return rows[0]


async def handled_by(engine: AsyncEngine, event_id: str) -> set[str]:
    """The handlers the ledger records as done with the event."""
    p = tables.processed_messages.c
    async with engine.connect() as conn:
        return set(await conn.scalars(select(p.handler).where(p.message_id == event_id)))


async def pending_count(engine: AsyncEngine) -> int:
    o = tables.outbox.c
    async with engine.connect() as conn:
        count = await conn.scalar(select(func.count()).where(o.completed_at.is_(None)))
    return int(count or 0)


async def allocated_in_write_model(engine: AsyncEngine, orderid: str, sku: str) -> str | None:
    """The batch the write model (not the read model) has the order's line in."""
    b, line, a = tables.batches.c, tables.order_lines.c, tables.allocations.c
    async with engine.connect() as conn:
        ref: str | None = await conn.scalar(
            select(b.reference)
            .join(tables.allocations, a.batch_id == b.id)
            .join(tables.order_lines, line.id == a.orderline_id)
            .where(line.orderid == orderid, line.sku == sku)
        )
    return ref


async def deliver_until_delivered(
    container: Container, event_ids: list[str], within: float = 15.0
) -> None:
    """Run delivery passes until every one of the events is marked delivered.

    Each pass takes only what is due, so this also waits out the backoff of
    an event whose delivery failed.
    """
    engine: AsyncEngine = container.engine()
    wanted = set(event_ids)

    async def delivered() -> bool:
        await container.delivery().deliver_due()
        o = tables.outbox.c
        async with engine.connect() as conn:
            done = set(
                await conn.scalars(
                    select(o.id).where(o.id.in_(wanted), o.completed_at.is_not(None))
                )
            )
        return done == wanted

    await eventually(delivered, within, f"delivery of {sorted(wanted)}")


async def outbox_pending(database_url: str) -> int:
    rows = await query(database_url, "SELECT count(*) FROM outbox WHERE completed_at IS NULL")
    count: int = rows[0][0]
    return count
