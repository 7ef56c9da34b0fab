"""The last change_batch_quantity stream entry applied to each batch.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "batch_stream_positions",
        sa.Column("reference", sa.String(255), nullable=False),
        sa.Column("entry_ms", sa.BigInteger(), nullable=False),
        sa.Column("entry_seq", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["reference"],
            ["batches.reference"],
            name=op.f("fk_batch_stream_positions_reference_batches"),
        ),
        sa.PrimaryKeyConstraint("reference", name=op.f("pk_batch_stream_positions")),
    )


def downgrade() -> None:
    op.drop_table("batch_stream_positions")
