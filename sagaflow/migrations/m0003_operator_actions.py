"""sagaflow migration 0003: the record of what operators did to parked saga work, in a
workflow's home (beside its saga log).

Frozen: a shipped migration is never edited (databases in the field were made by it);
a change to this table is a new numbered migration.
"""

from __future__ import annotations

import sqlalchemy as sa

NUMBER = 3
PART = "operator_actions"
TABLES = ("sagaflow_operator_actions",)


def upgrade(op) -> None:
    op.create_table(
        "sagaflow_operator_actions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("saga_id", sa.String(length=80), nullable=False),
        sa.Column("entry_id", sa.String(length=140), nullable=False),
        sa.Column("actor", sa.String(length=120), nullable=False),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_sagaflow_operator_actions_saga_id", "sagaflow_operator_actions", ["saga_id"]
    )
