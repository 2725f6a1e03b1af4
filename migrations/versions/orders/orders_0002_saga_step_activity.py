"""saga steps: last activity time and a status index, for the stall check

Revision ID: orders_0002
Revises: orders_0001
Create Date: 2026-12-01 08:40:00
"""

from alembic import op
import sqlalchemy as sa


revision = "orders_0002"
down_revision = "orders_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("saga_steps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_saga_steps_status"), ["status"], unique=False)
    # Rows written before this column existed: their last activity is their last timestamp.
    op.execute(
        "UPDATE saga_steps SET updated_at = COALESCE(finished_at, started_at, CURRENT_TIMESTAMP)"
    )


def downgrade() -> None:
    with op.batch_alter_table("saga_steps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_saga_steps_status"))
        batch_op.drop_column("updated_at")
