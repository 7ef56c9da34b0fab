"""The stock ledger, each batch's version, and every accepted line's state.

The ledger starts with what the write model holds: a row for each batch's
purchased units, one for each allocated line, one for each refused line.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEDGER_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="0"))
    op.execute(
        "UPDATE batches SET version = (SELECT version_number FROM products"
        " WHERE products.sku = batches.sku)"
    )
    op.create_table(
        "order_lines_view",
        sa.Column("orderid", sa.String(255), nullable=False),
        sa.Column("sku", sa.String(255), nullable=False),
        sa.Column("qty", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("batchref", sa.String(255), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("orderid", "sku", name=op.f("pk_order_lines_view")),
    )
    op.create_index("ix_order_lines_view_sku_orderid", "order_lines_view", ["sku", "orderid"])
    op.create_index(
        "ix_order_lines_view_state_orderid", "order_lines_view", ["state", "orderid"]
    )
    op.create_table(
        "stock_ledger",
        sa.Column("id", LEDGER_ID, autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("sku", sa.String(255), nullable=False),
        sa.Column("batchref", sa.String(255), nullable=True),
        sa.Column("orderid", sa.String(255), nullable=True),
        sa.Column("qty", sa.Integer(), nullable=False),
        sa.Column("line_qty", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(32), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stock_ledger")),
    )
    op.create_index("ix_stock_ledger_orderid_id", "stock_ledger", ["orderid", "id"])
    op.create_index("ix_stock_ledger_sku_id", "stock_ledger", ["sku", "id"])
    now = "CURRENT_TIMESTAMP"
    op.execute(
        "INSERT INTO stock_ledger (at, kind, sku, batchref, qty, reason, version)"
        f" SELECT {now}, 'added', sku, reference, purchased_quantity, 'migrated', version"
        " FROM batches ORDER BY id"
    )
    op.execute(
        "INSERT INTO stock_ledger"
        " (at, kind, sku, batchref, orderid, qty, line_qty, reason, version)"
        f" SELECT {now}, 'allocated', l.sku, b.reference, l.orderid, -l.qty, l.qty, 'migrated',"
        " b.version FROM allocations a JOIN order_lines l ON l.id = a.orderline_id"
        " JOIN batches b ON b.id = a.batch_id ORDER BY l.id"
    )
    op.execute(
        "INSERT INTO order_lines_view (orderid, sku, qty, state, batchref, version)"
        " SELECT l.orderid, l.sku, l.qty, 'allocated', b.reference, b.version"
        " FROM allocations a JOIN order_lines l ON l.id = a.orderline_id"
        " JOIN batches b ON b.id = a.batch_id"
    )
    # Refused and not allocated since; or allocated once and taken off again.
    op.execute(
        "INSERT INTO order_lines_view (orderid, sku, qty, state, batchref, version)"
        " SELECT r.orderid, r.sku, r.qty, 'out_of_stock', NULL, r.version"
        " FROM refused_lines_view r WHERE NOT EXISTS (SELECT 1 FROM order_lines_view o"
        " WHERE o.orderid = r.orderid AND o.sku = r.sku)"
    )
    op.execute(
        "INSERT INTO stock_ledger (at, kind, sku, orderid, qty, line_qty, reason, version)"
        f" SELECT {now}, 'refused', sku, orderid, 0, qty, 'migrated', version"
        " FROM order_lines_view WHERE state = 'out_of_stock'"
    )
    op.drop_table("refused_lines_view")


def downgrade() -> None:
    op.create_table(
        "refused_lines_view",
        sa.Column("orderid", sa.String(255), nullable=False),
        sa.Column("sku", sa.String(255), nullable=False),
        sa.Column("qty", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("orderid", "sku", name=op.f("pk_refused_lines_view")),
    )
    op.execute(
        "INSERT INTO refused_lines_view (orderid, sku, qty, version)"
        " SELECT orderid, sku, qty, version FROM order_lines_view WHERE state = 'out_of_stock'"
    )
    op.drop_table("stock_ledger")
    op.drop_table("order_lines_view")
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("version")
