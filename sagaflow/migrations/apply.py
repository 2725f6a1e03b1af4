"""Bringing one database's sagaflow tables up to date: `upgrade(database, parts)`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection, Engine

from sagaflow._errors import MigrationRefused
from sagaflow.migrations import steps, version
from sagaflow.migrations.version import NOTHING, Recorded

# Two deploys migrating one PostgreSQL database at once take turns on this lock (SQLite's
# BEGIN IMMEDIATE already makes them queue).
POSTGRES_LOCK_KEY = 0x5A6AF10


@dataclass(frozen=True)
class Outcome:
    """What `upgrade` found and did."""

    before: Recorded  # the version row as it was (NOTHING: there was none)
    after: Recorded
    applied: tuple[int, ...]  # the numbers of the steps applied now, in order
    adopted: frozenset[str]  # parts whose tables an application's migrations had made

    @property
    def changed(self) -> bool:
        return self.before != self.after


def upgrade(database: str | Engine, parts: Iterable[str] = steps.SERVICE_PARTS) -> Outcome:
    """Apply, in order, the sagaflow migrations this database has not had, and record its
    version. Safe to run again: a database already up to date is not written to.

    `database` is a URL (a SQLite file is created if missing) or an Engine. `parts` are
    those this database must hold: SERVICE_PARTS in every service that runs saga steps,
    HOME_PARTS in a workflow's home. Parts it holds already are brought up to date as well,
    so a run without the home's parts never leaves its saga log behind.

    A part whose tables are there without a version row saying so was made by the
    application's own Alembic history (sagaflow.schema): its tables are kept, and counted
    as made by steps up to MADE_BY_APPLICATIONS_UP_TO.

    Everything happens in one transaction where the database allows DDL in one: always on
    PostgreSQL; on SQLite when given a URL (sagaflow._db's engine begins explicitly), not
    through an Engine of the caller's that leaves pysqlite to begin.
    """
    wanted = _known(parts)
    engine, owned = _engine(database)
    try:
        with engine.begin() as connection:
            return _upgrade(connection, wanted)
    finally:
        if owned:
            engine.dispose()


def _upgrade(connection: Connection, wanted: frozenset[str]) -> Outcome:
    if connection.dialect.name == "postgresql":
        lock = sa.text("SELECT pg_advisory_xact_lock(:key)")
        connection.execute(lock, {"key": POSTGRES_LOCK_KEY})
    op = Operations(MigrationContext.configure(connection))
    existing = set(sa.inspect(connection).get_table_names())
    before = version.read(connection) if version.TABLE in existing else None
    if before is None:
        before = NOTHING
        if version.TABLE not in existing:
            version.create(op)
    if before.version > steps.LATEST:
        raise MigrationRefused(
            f"this database is at sagaflow migration {before.version}; this sagaflow knows "
            f"up to {steps.LATEST}: run a newer sagaflow"
        )
    adopted = frozenset(
        part
        for part in steps.PARTS
        if part not in before.parts and _made_by_application(part, existing)
    )
    held = wanted | before.parts | adopted
    due = [step for step in steps.STEPS if step.PART in held and not _done(step, before, adopted)]
    for step in due:
        step.upgrade(op)
    after = Recorded(steps.LATEST, held)
    if after != before:
        version.write(connection, after, datetime.now(UTC))
    return Outcome(before, after, tuple(step.NUMBER for step in due), adopted)


class _Step(Protocol):
    """A numbered migration module (sagaflow/migrations/m0001_ledger.py, ...)."""

    NUMBER: int
    PART: str


def _done(step: _Step, before: Recorded, adopted: frozenset[str]) -> bool:
    if step.PART in before.parts:
        return before.version >= step.NUMBER
    if step.PART in adopted:
        return steps.MADE_BY_APPLICATIONS_UP_TO >= step.NUMBER
    return False


def _made_by_application(part: str, existing: set[str]) -> bool:
    """All of the part's tables are there (True) or none (False); some only is refused,
    since no step could make the rest without a person looking first."""
    tables = steps.tables_made_by_applications(part)
    there = [table for table in tables if table in existing]
    if there and len(there) < len(tables):
        missing = [table for table in tables if table not in existing]
        raise MigrationRefused(
            f"sagaflow's {part} is half there: {', '.join(there)} exists, "
            f"{', '.join(missing)} does not"
        )
    return bool(there)


def _known(parts: Iterable[str]) -> frozenset[str]:
    wanted = frozenset([parts] if isinstance(parts, str) else parts)
    unknown = sorted(wanted - set(steps.PARTS))
    if unknown or not wanted:
        raise ValueError(
            f"unknown sagaflow parts {unknown}; the parts are {', '.join(steps.PARTS)}"
            if unknown
            else "no sagaflow parts asked for"
        )
    return wanted


def _engine(database: str | Engine) -> tuple[Engine, bool]:
    """The engine, and whether it is ours to dispose of."""
    if isinstance(database, Engine):
        return database, False
    from sagaflow._db import Database

    return Database(database, create=True).engine, True
