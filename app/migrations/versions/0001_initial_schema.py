"""Initial schema: the write model and its projections.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "products",
        sa.Column("sku", sa.String(255), nullable=False),
        sa.Column("version_number", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("sku", name=op.f("pk_products")),
    )
    op.create_table(
        "batches",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("reference", sa.String(255), nullable=False),
        sa.Column("sku", sa.String(255), nullable=False),
        sa.Column("purchased_quantity", sa.Integer(), nullable=False),
        sa.Column("allocated_quantity", sa.Integer(), server_default="0", nullable=False),
        sa.Column("eta", sa.Date(), nullable=True),
        sa.ForeignKeyConstraint(["sku"], ["products.sku"], name=op.f("fk_batches_sku_products")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
        sa.UniqueConstraint("reference", name=op.f("uq_batches_reference")),
    )
    op.create_index(op.f("ix_batches_sku"), "batches", ["sku"])
    op.create_table(
        "order_lines",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("orderid", sa.String(255), nullable=False),
        sa.Column("sku", sa.String(255), nullable=False),
        sa.Column("qty", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_order_lines")),
        sa.UniqueConstraint("orderid", "sku", name=op.f("uq_order_lines_orderid_sku")),
    )
    op.create_table(
        "allocations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("orderline_id", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name=op.f("fk_allocations_batch_id_batches")
        ),
        sa.ForeignKeyConstraint(
            ["orderline_id"],
            ["order_lines.id"],
            name=op.f("fk_allocations_orderline_id_order_lines"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_allocations")),
        sa.UniqueConstraint("orderline_id", name=op.f("uq_allocations_orderline_id")),
    )
    op.create_index("ix_allocations_batch_id", "allocations", ["batch_id"])
    op.create_table(
        "allocations_view",
        sa.Column("orderid", sa.String(255), nullable=False),
        sa.Column("sku", sa.String(255), nullable=False),
        sa.Column("batchref", sa.String(255), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("orderid", "sku", name=op.f("pk_allocations_view")),
    )
    op.create_table(
        "batches_view",
        sa.Column("reference", sa.String(255), nullable=False),
        sa.Column("sku", sa.String(255), nullable=False),
        sa.Column("eta", sa.Date(), nullable=True),
        sa.Column("purchased", sa.Integer(), nullable=False),
        sa.Column("allocated", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("reference", name=op.f("pk_batches_view")),
    )
    op.create_index(op.f("ix_batches_view_sku"), "batches_view", ["sku"])


def downgrade() -> None:
    op.drop_table("batches_view")
    op.drop_table("allocations_view")
    op.drop_table("allocations")
    op.drop_table("order_lines")
    op.drop_table("batches")
    op.drop_table("products")
