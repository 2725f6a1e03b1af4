"""sagaflow migration 0007: each saga keeps the W3C context of its trace when it is traced
(sagaflow.tracing), so that the console shows its trace id and an operator's action on the
saga joins its trace.

Frozen: a shipped migration is never edited (databases in the field were made by it);
a change to this table is a new numbered migration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:
    from alembic.operations import Operations

NUMBER = 7
PART = "saga_log"
TABLES: tuple[str, ...] = ()  # a column of sagaflow_instances (m0002)


def upgrade(op: Operations) -> None:
    # NULL: the saga was not traced (tracing off, or started before this migration ran).
    op.add_column(
        "sagaflow_instances", sa.Column("traceparent", sa.String(length=64), nullable=True)
    )
