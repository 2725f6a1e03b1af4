"""orders: the record of what operators did to parked saga work

Revision ID: orders_0005
Revises: orders_0004
Create Date: 2026-12-01 12:00:00
"""

from alembic import op

from sagaflow.schema import create_operator_actions


revision = "orders_0005"
down_revision = "orders_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_operator_actions(op)


def downgrade() -> None:
    op.drop_table("sagaflow_operator_actions")
