"""sagaflow migration 0004: the transactional outbox, in every service that runs saga
steps (a saga's start, an announcement, any message sent after its transaction commits).

Frozen: a shipped migration is never edited (databases in the field were made by it);
a change to this table is a new numbered migration.
"""

from __future__ import annotations

import sqlalchemy as sa

NUMBER = 4
PART = "outbox"
TABLES = ("sagaflow_outbox",)


def upgrade(op) -> None:
    op.create_table(
        "sagaflow_outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=80), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(length=120), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("parked", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_sagaflow_outbox_key", "sagaflow_outbox", ["key"])
    op.create_index("ix_sagaflow_outbox_sent_at", "sagaflow_outbox", ["sent_at"])
