"""products: the idempotency ledger is keyed by saga id (the saga runtime's own table)

Revision ID: products_0002
Revises: products_0001
Create Date: 2026-12-01 11:00:00
"""

from alembic import op

from sagaflow.schema import create_ledger, move_legacy_ledger


revision = "products_0002"
down_revision = "products_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_ledger(op)
    move_legacy_ledger(op, "order")


def downgrade() -> None:
    raise NotImplementedError("the ledger keyed by order id is gone; restore from a backup")
