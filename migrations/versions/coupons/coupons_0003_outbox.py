"""coupons: the transactional outbox (choreography: the events its steps announce)

Revision ID: coupons_0003
Revises: coupons_0002
Create Date: 2026-12-01 14:00:00
"""

from alembic import op

from sagaflow.schema import create_outbox


revision = "coupons_0003"
down_revision = "coupons_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_outbox(op)


def downgrade() -> None:
    op.drop_table("sagaflow_outbox")
