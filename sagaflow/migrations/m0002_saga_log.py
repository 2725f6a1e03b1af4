"""sagaflow migration 0002: the saga log (sagaflow_instances, sagaflow_steps), in a
workflow's home.

Frozen: a shipped migration is never edited (databases in the field were made by it);
a change to these tables is a new numbered migration.
"""

from __future__ import annotations

import sqlalchemy as sa

NUMBER = 2
PART = "saga_log"
TABLES = ("sagaflow_instances", "sagaflow_steps")


def upgrade(op) -> None:
    op.create_table(
        "sagaflow_instances",
        sa.Column("saga_id", sa.String(length=80), nullable=False),
        sa.Column("workflow", sa.String(length=40), nullable=False),
        sa.Column("business_key", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("turned_back", sa.Integer(), nullable=False),
        sa.Column("context", sa.Text(), nullable=False),
        sa.Column("failed_step", sa.String(length=40), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("last_event_id", sa.String(length=40), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("saga_id"),
    )
    op.create_index("ix_sagaflow_instances_business_key", "sagaflow_instances", ["business_key"])
    op.create_index("ix_sagaflow_instances_status", "sagaflow_instances", ["status"])
    op.create_table(
        "sagaflow_steps",
        sa.Column("saga_id", sa.String(length=80), nullable=False),
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("worker", sa.String(length=120), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["saga_id"], ["sagaflow_instances.saga_id"]),
        sa.PrimaryKeyConstraint("saga_id", "name"),
    )
    op.create_index("ix_sagaflow_steps_status", "sagaflow_steps", ["status"])
