"""sagaflow migration 0001: the idempotency ledger, in every service that runs saga steps.

Frozen: a shipped migration is never edited (databases in the field were made by it);
a change to this table is a new numbered migration.
"""

from __future__ import annotations

import sqlalchemy as sa

NUMBER = 1
PART = "ledger"
TABLES = ("sagaflow_ledger",)


def upgrade(op) -> None:
    op.create_table(
        "sagaflow_ledger",
        sa.Column("saga_id", sa.String(length=80), nullable=False),
        sa.Column("step", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("saga_id", "step"),
    )
