"""sagaflow's own tables, in numbered migrations of its own, independent of any
application's migrations.

Each step (m0001_ledger.py, ...) creates or changes the tables of one part, and is frozen
once shipped: a change is a new number, never an edit. The parts a database holds:

    ledger, outbox               every service that runs saga steps (SERVICE_PARTS)
    saga_log, operator_actions   also, a workflow's home (HOME_PARTS)
"""

from __future__ import annotations

from sagaflow.migrations import m0001_ledger, m0002_saga_log, m0003_operator_actions, m0004_outbox

# In the order they apply; a new step goes at the end, with the next number.
STEPS = (m0001_ledger, m0002_saga_log, m0003_operator_actions, m0004_outbox)
LATEST = STEPS[-1].NUMBER

SERVICE_PARTS = ("ledger", "outbox")
HOME_PARTS = (*SERVICE_PARTS, "saga_log", "operator_actions")
