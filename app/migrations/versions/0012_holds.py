"""Holds: stock kept for a checkout until it is confirmed, released or expires.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.add_column(
            sa.Column("held_quantity", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("batches_view") as view:
        view.add_column(sa.Column("held", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("stock_ledger") as ledger:
        ledger.add_column(sa.Column("holdid", sa.String(255), nullable=True))
    op.create_table(
        "holds",
        sa.Column("holdid", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("orderid", sa.String(255), nullable=True),
        sa.Column("lines", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("holdid", name=op.f("pk_holds")),
    )
    op.create_index(
        "ix_holds_due",
        "holds",
        ["expires_at"],
        postgresql_where=sa.text("state = 'held'"),
        sqlite_where=sa.text("state = 'held'"),
    )
    op.create_table(
        "hold_lines",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("holdid", sa.String(255), nullable=False),
        sa.Column("sku", sa.String(255), nullable=False),
        sa.Column("batch_id", sa.Integer(), nullable=False),
        sa.Column("qty", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name=op.f("fk_hold_lines_batch_id_batches")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hold_lines")),
        sa.UniqueConstraint("holdid", "sku", name=op.f("uq_hold_lines_holdid_sku")),
    )
    op.create_index("ix_hold_lines_batch_id", "hold_lines", ["batch_id"])


def downgrade() -> None:
    op.drop_table("hold_lines")
    op.drop_table("holds")
    with op.batch_alter_table("stock_ledger") as ledger:
        ledger.drop_column("holdid")
    with op.batch_alter_table("batches_view") as view:
        view.drop_column("held")
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("held_quantity")
