"""A product's undelivered events by version, for delivery in version order.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNDELIVERED = sa.text("completed_at IS NULL")


def upgrade() -> None:
    op.create_index(
        "ix_outbox_undelivered_by_product",
        "outbox",
        ["sku", "version"],
        postgresql_where=UNDELIVERED,
        sqlite_where=UNDELIVERED,
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_undelivered_by_product", table_name="outbox")
