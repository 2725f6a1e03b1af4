"""orders: the transactional outbox (messages written with the change that calls for them)

Revision ID: orders_0006
Revises: orders_0005
Create Date: 2026-12-01 13:00:00
"""

from alembic import op

from sagaflow.schema import create_outbox


revision = "orders_0006"
down_revision = "orders_0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_outbox(op)


def downgrade() -> None:
    op.drop_table("sagaflow_outbox")
