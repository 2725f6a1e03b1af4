"""Idempotency for saga work, keyed by (saga id, step), kept in each service's own database
and written in the same local transaction as the business change.

A step and its compensation share one row. Whichever arrives first decides:
- step first: the row says APPLIED (with what was applied); a repeat is a no-op, and the
  compensation later undoes exactly what the row records, then marks it COMPENSATED;
- compensation first (the step timed out and may never have run, or never was reached):
  the row says VOIDED, and a late step refuses to apply.
Concurrent duplicates collide on the primary key and the loser re-reads.

In choreography the same transaction also writes the event that announces the work
(sagaflow/_choreography.py: `announce`), so a change and its event commit together.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import DateTime, String, Text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sagaflow._choreography import announce, rolled_back
from sagaflow._db import DatabaseHandle
from sagaflow._errors import AlreadyCompensated

_T = TypeVar("_T")

APPLIED, COMPENSATED, VOIDED = "APPLIED", "COMPENSATED", "VOIDED"
NEVER_APPLIED = "nothing to undo: step never applied (voided)"


def utcnow() -> datetime:
    return datetime.now(UTC)


def ledger_table(base: type[DeclarativeBase]) -> type[Any]:
    """The ledger table in one service's declarative base (its own database)."""

    # The base is the owner's, known only at run time: mypy cannot check a class built on
    # a variable, so it is taken as it is.
    class SagaLedger(base):  # type: ignore[misc,valid-type]
        __tablename__ = "sagaflow_ledger"
        saga_id: Mapped[str] = mapped_column(String(80), primary_key=True)
        step: Mapped[str] = mapped_column(String(40), primary_key=True)
        status: Mapped[str] = mapped_column(String(16))
        payload: Mapped[str] = mapped_column(Text, default="{}")
        updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    return SagaLedger


def _retry_on_duplicate(
    db: DatabaseHandle, work: Callable[[Session], _T], again: Callable[[Session], _T] | None = None
) -> _T:
    """Run `work(session)` in a transaction; if a concurrent duplicate won the key (or the
    key was already there), run `again` (default: `work`) once, so this call sees the
    winner's row."""
    try:
        with db.write() as session:
            return work(session)
    except IntegrityError:
        rolled_back()
        with db.write() as session:
            return (again or work)(session)
    except BaseException:
        rolled_back()
        raise


def apply_once(
    db: DatabaseHandle,
    ledger: type[Any],
    saga_id: str,
    step: str,
    apply: Callable[[Session], dict[str, Any]],
) -> dict[str, Any]:
    """Apply `apply(session)` once for (saga_id, step) and return what it applied."""

    def claim_and_apply(session: Session) -> dict[str, Any]:
        # Claiming the key first: a concurrent duplicate blocks here until this commits,
        # then fails on the key. A key already there fails at once.
        entry = ledger(saga_id=saga_id, step=step, status=APPLIED, payload="{}")
        session.add(entry)
        session.flush()
        applied = apply(session)
        entry.payload = json.dumps(applied)
        announce(session)
        return applied

    def seen_before(session: Session) -> dict[str, Any]:
        # A redelivery, a DLQ retry, or the loser of a race: what is recorded decides.
        entry = session.get(ledger, (saga_id, step), with_for_update=True)
        if entry is not None:
            if entry.status == APPLIED:
                applied: dict[str, Any] = json.loads(entry.payload)
                return applied
            raise AlreadyCompensated(f"{step} of {saga_id} was already {entry.status.lower()}")
        return claim_and_apply(session)  # the business change itself hit a unique key

    # The first delivery is by far the most common: it needs no read of the ledger (one
    # round trip less per step). Whatever else finds the key taken.
    return _retry_on_duplicate(db, claim_and_apply, seen_before)


def compensate_once(
    db: DatabaseHandle,
    ledger: type[Any],
    saga_id: str,
    step: str,
    undo: Callable[[Session, dict[str, Any]], None],
) -> str:
    """Undo (saga_id, step) once; if it never applied, void it so it never will."""

    def work(session: Session) -> str:
        entry = session.get(ledger, (saga_id, step), with_for_update=True)
        if entry is None:
            session.add(ledger(saga_id=saga_id, step=step, status=VOIDED, payload="{}"))
            session.flush()
            announce(session)
            return NEVER_APPLIED
        if entry.status == APPLIED:
            undo(session, json.loads(entry.payload))
            entry.status = COMPENSATED
            entry.updated_at = utcnow()
            announce(session)
            return "undone"
        return f"nothing to do: already {entry.status.lower()}"

    return _retry_on_duplicate(db, work)
