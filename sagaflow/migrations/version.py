"""The version row: `sagaflow_schema_version`, one row per database, saying the number of
the last sagaflow migration applied to it and the parts it holds (ledger, outbox, ...).

The parts are kept beside the number because a service's database holds only some of
sagaflow's tables: a number alone could not say whether a later --home run still owes the
saga log. Frozen like the numbered steps: a change to this table is a new number too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection

if TYPE_CHECKING:
    from alembic.operations import Operations

from sagaflow._errors import MigrationRefused

TABLE = "sagaflow_schema_version"

version_table = sa.Table(
    TABLE,
    sa.MetaData(),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("parts", sa.String(length=200), nullable=False),
    sa.Column("migrated_at", sa.DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class Recorded:
    """What a database's version row says (version 0, no parts: nothing yet)."""

    version: int
    parts: frozenset[str]


NOTHING = Recorded(0, frozenset())


def create(op: Operations) -> None:
    op.create_table(
        TABLE,
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("parts", sa.String(length=200), nullable=False),
        sa.Column("migrated_at", sa.DateTime(timezone=True), nullable=False),
    )


def read(connection: Connection) -> Recorded | None:
    """The row, or None when the table holds none (made, but never written)."""
    rows = connection.execute(sa.select(version_table.c.version, version_table.c.parts)).all()
    if len(rows) > 1:
        raise MigrationRefused(f"{TABLE} holds {len(rows)} rows; it must hold one")
    if not rows:
        return None
    version, parts = rows[0]
    return Recorded(version, frozenset(p for p in parts.split(",") if p))


def write(connection: Connection, recorded: Recorded, now: datetime) -> None:
    connection.execute(sa.delete(version_table))
    connection.execute(
        sa.insert(version_table).values(
            version=recorded.version, parts=",".join(sorted(recorded.parts)), migrated_at=now
        )
    )
