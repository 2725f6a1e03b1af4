"""balances: a 64-bit balance, so a refund after a top-up to the cap always fits

Revision ID: balances_0002
Revises: balances_0001
Create Date: 2026-12-01 10:10:00
"""

from alembic import op
import sqlalchemy as sa


revision = "balances_0002"
down_revision = "balances_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("balances", schema=None) as batch_op:
        batch_op.alter_column(
            "balance", existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("balances", schema=None) as batch_op:
        batch_op.alter_column(
            "balance", existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False
        )
