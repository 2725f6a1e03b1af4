"""sagaflow migration 0005: the archive, in a workflow's home: finished sagas moved out of
the hot tables (`sagaflow_instances`, `sagaflow_steps`) by `archive --older-than`, each
kept whole (its timeline as JSON) and still found by id.

Frozen: a shipped migration is never edited (databases in the field were made by it);
a change to this table is a new numbered migration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:
    from alembic.operations import Operations

NUMBER = 5
PART = "archive"
TABLES = ("sagaflow_archive",)


def upgrade(op: Operations) -> None:
    op.create_table(
        "sagaflow_archive",
        sa.Column("saga_id", sa.String(length=80), nullable=False),
        sa.Column("workflow", sa.String(length=40), nullable=False),
        sa.Column("business_key", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("timeline", sa.Text(), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("saga_id"),
    )
    op.create_index("ix_sagaflow_archive_business_key", "sagaflow_archive", ["business_key"])
