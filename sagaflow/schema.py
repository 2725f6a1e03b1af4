"""Migration operations for the runtime's tables, for the services' Alembic histories:
the ledger in every service that runs saga work, the saga log in a workflow's home."""

from __future__ import annotations

import sqlalchemy as sa


def create_ledger(op) -> None:
    op.create_table(
        "sagaflow_ledger",
        sa.Column("saga_id", sa.String(length=80), nullable=False),
        sa.Column("step", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("saga_id", "step"),
    )


def move_legacy_ledger(op, workflow: str) -> None:
    """Rows of the ledger keyed by order id become rows keyed by saga id."""
    op.execute(
        "INSERT INTO sagaflow_ledger (saga_id, step, status, payload, updated_at) "
        f"SELECT '{workflow}-' || CAST(order_id AS VARCHAR(20)), step, status, payload, "
        "updated_at FROM saga_ledger"
    )
    op.drop_table("saga_ledger")


def create_saga_log(op) -> None:
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


def drop_saga_log(op) -> None:
    op.drop_table("sagaflow_steps")
    op.drop_table("sagaflow_instances")


def create_operator_actions(op) -> None:
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


def create_outbox(op) -> None:
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
