"""orders: an Idempotency-Key is unique per user, not across every user

Revision ID: orders_0003
Revises: orders_0002
Create Date: 2026-12-01 10:00:00
"""

from alembic import op


revision = "orders_0003"
down_revision = "orders_0002"
branch_labels = None
depends_on = None

# The first schema left the constraint unnamed: SQLite has no name for it, PostgreSQL
# named it itself. Batch mode (SQLite rebuilds the table) finds it by this convention.
SQLITE_NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _old_constraint() -> str:
    return (
        "uq_orders_idempotency_key"
        if op.get_bind().dialect.name == "sqlite"
        else ("orders_idempotency_key_key")
    )


def upgrade() -> None:
    with op.batch_alter_table("orders", naming_convention=SQLITE_NAMES) as batch_op:
        batch_op.drop_constraint(_old_constraint(), type_="unique")
        batch_op.create_unique_constraint(
            "uq_orders_user_idempotency_key", ["user_id", "idempotency_key"]
        )


def downgrade() -> None:
    with op.batch_alter_table("orders", naming_convention=SQLITE_NAMES) as batch_op:
        batch_op.drop_constraint("uq_orders_user_idempotency_key", type_="unique")
        batch_op.create_unique_constraint(_old_constraint(), ["idempotency_key"])
