"""sagaflow migration 0006: each saga records the version of its workflow when it starts
(`Workflow.version`), so that operators see which plan it runs and when an old version
has no saga left in flight.

Frozen: a shipped migration is never edited (databases in the field were made by it);
a change to this table is a new numbered migration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:
    from alembic.operations import Operations

NUMBER = 6
PART = "saga_log"
TABLES: tuple[str, ...] = ()  # a column of sagaflow_instances (m0002)


def upgrade(op: Operations) -> None:
    # Sagas started before this migration ran on a plan nobody recorded: NULL says so.
    op.add_column("sagaflow_instances", sa.Column("version", sa.String(length=40), nullable=True))
