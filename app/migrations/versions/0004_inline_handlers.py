"""Read models and reallocation run inline, in the transaction of the change.

Until this revision every handler ran from the outbox after the commit. From
it on, the read-model handlers and ``reallocate`` run in the transaction that
raised the event, and the outbox delivers only to the handlers that reach
outside the database. An event stored by an earlier version and still
undelivered may be waiting for one of those inline handlers, which nothing
would run any more; so the upgrade refuses while there is such an event,
and says how to let the earlier version finish it. No table changes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# What ran from the outbox before, and runs inline now, by event type.
_NOW_INLINE = {
    "BatchCreated": ("update_batch_read_model",),
    "BatchQuantityChanged": ("update_batch_read_model",),
    "Allocated": ("add_allocation_to_read_model",),
    "Deallocated": ("remove_allocation_from_read_model", "reallocate"),
}


def upgrade() -> None:
    outbox = sa.table(
        "outbox", sa.column("id"), sa.column("type"), sa.column("completed_at")
    )
    processed = sa.table("processed_messages", sa.column("message_id"), sa.column("handler"))
    unfinished = 0
    for event_type, handlers in _NOW_INLINE.items():
        for handler in handlers:
            done = (
                sa.select(processed.c.message_id)
                .where(processed.c.message_id == outbox.c.id, processed.c.handler == handler)
                .exists()
            )
            unfinished += op.get_bind().scalar(
                sa.select(sa.func.count())
                .select_from(outbox)
                .where(outbox.c.completed_at.is_(None), outbox.c.type == event_type, ~done)
            ) or 0
    if unfinished:
        raise RuntimeError(
            f"the outbox holds {unfinished} undelivered events that this version would no "
            "longer deliver to the read models or to reallocation: run the previous "
            "version's `allocation worker` until `allocation outbox` shows nothing "
            "pending, then upgrade again"
        )


def downgrade() -> None:
    pass  # nothing changed in the tables
