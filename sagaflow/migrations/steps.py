"""The numbered steps in the order they apply, and the parts of sagaflow they make."""

from __future__ import annotations

from sagaflow.migrations import (
    m0001_ledger,
    m0002_saga_log,
    m0003_operator_actions,
    m0004_outbox,
    m0005_archive,
    m0006_saga_version,
    m0007_saga_trace,
)

# A new step goes at the end, with the next number; a shipped one is never edited.
STEPS = (
    m0001_ledger,
    m0002_saga_log,
    m0003_operator_actions,
    m0004_outbox,
    m0005_archive,
    m0006_saga_version,
    m0007_saga_trace,
)
LATEST = STEPS[-1].NUMBER

SERVICE_PARTS = ("ledger", "outbox")  # every service that runs saga steps
HOME_PARTS = (*SERVICE_PARTS, "saga_log", "operator_actions", "archive")  # also, a home
PARTS = HOME_PARTS

# Frozen: applications' own Alembic histories made steps 1 to 4 through sagaflow.schema
# before sagaflow had a version row; a database whose tables they made is at this number.
# Applications' migrations never run a later step.
MADE_BY_APPLICATIONS_UP_TO = 4


def tables_made_by_applications(part: str) -> tuple[str, ...]:
    """The tables of `part` an application's own migrations may have made already."""
    return tuple(
        table
        for step in STEPS
        if part == step.PART and step.NUMBER <= MADE_BY_APPLICATIONS_UP_TO
        for table in step.TABLES
    )
