"""When the change that set each batch's quantity last came, whichever way it came.

The stream positions of 0005 become the positions of every change: a stream
entry's id, when a pub/sub message was received, when a change over HTTP was
applied. The rows kept are the stream's, as they were.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _positions(name: str, ms: str, seq: str) -> None:
    op.create_table(
        name,
        sa.Column("reference", sa.String(255), nullable=False),
        sa.Column(ms, sa.BigInteger(), nullable=False),
        sa.Column(seq, sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["reference"], ["batches.reference"], name=op.f(f"fk_{name}_reference_batches")
        ),
        sa.PrimaryKeyConstraint("reference", name=op.f(f"pk_{name}")),
    )


def upgrade() -> None:
    _positions("batch_change_positions", "position_ms", "position_seq")
    op.execute(
        "INSERT INTO batch_change_positions (reference, position_ms, position_seq)"
        " SELECT reference, entry_ms, entry_seq FROM batch_stream_positions"
    )
    op.drop_table("batch_stream_positions")


def downgrade() -> None:
    _positions("batch_stream_positions", "entry_ms", "entry_seq")
    op.execute(
        "INSERT INTO batch_stream_positions (reference, entry_ms, entry_seq)"
        " SELECT reference, position_ms, position_seq FROM batch_change_positions"
    )
    op.drop_table("batch_change_positions")
