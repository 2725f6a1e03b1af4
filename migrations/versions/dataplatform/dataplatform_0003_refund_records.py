"""dataplatform: a record of every refunded order (the refund saga's publish_refund)

Revision ID: dataplatform_0003
Revises: dataplatform_0002
Create Date: 2026-12-03 07:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "dataplatform_0003"
down_revision = "dataplatform_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "refund_records",
        sa.Column("order_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("items", sa.Text(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("order_id"),
    )


def downgrade() -> None:
    op.drop_table("refund_records")
