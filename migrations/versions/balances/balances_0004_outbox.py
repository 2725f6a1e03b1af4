"""balances: the transactional outbox (choreography: the events its steps announce)

Revision ID: balances_0004
Revises: balances_0003
Create Date: 2026-12-01 14:00:00
"""

from alembic import op

from sagaflow.schema import create_outbox


revision = "balances_0004"
down_revision = "balances_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_outbox(op)


def downgrade() -> None:
    op.drop_table("sagaflow_outbox")
