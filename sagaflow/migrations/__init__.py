"""sagaflow's own tables, in numbered migrations of its own, independent of any
application's migrations: `upgrade(database, parts)`, or `python -m sagaflow migrate`.

Each step (m0001_ledger.py, ...) creates or changes the tables of one part, and is frozen
once shipped: a change is a new number, never an edit. The parts a database holds:

    ledger, outbox               every service that runs saga steps (SERVICE_PARTS)
    saga_log, operator_actions   also, a workflow's home (HOME_PARTS)

The version row (version.py) says which number a database is at, and which parts it holds.
"""

from __future__ import annotations

from sagaflow.migrations.apply import Outcome, upgrade
from sagaflow.migrations.steps import HOME_PARTS, LATEST, PARTS, SERVICE_PARTS, STEPS

__all__ = ["HOME_PARTS", "LATEST", "PARTS", "SERVICE_PARTS", "STEPS", "Outcome", "upgrade"]
