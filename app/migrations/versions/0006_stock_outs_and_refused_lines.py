"""Stock-outs of a product, and lines no batch could take.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("products") as batch:
        batch.add_column(
            sa.Column("out_of_stock", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "refused_lines_view",
        sa.Column("orderid", sa.String(255), nullable=False),
        sa.Column("sku", sa.String(255), nullable=False),
        sa.Column("qty", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("orderid", "sku", name=op.f("pk_refused_lines_view")),
    )


def downgrade() -> None:
    op.drop_table("refused_lines_view")
    with op.batch_alter_table("products") as batch:
        batch.drop_column("out_of_stock")
