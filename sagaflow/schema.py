"""The operations the shop's Alembic histories call for the runtime's tables (the ledger
in every service that runs saga work, the saga log in a workflow's home, ...).

Frozen, like the migrations that call them: each name stands for one numbered sagaflow
migration (sagaflow/migrations/), so an old Alembic revision makes the same tables however
sagaflow changes later. A new database runs `python -m sagaflow migrate` instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sagaflow.migrations import m0001_ledger, m0002_saga_log, m0003_operator_actions, m0004_outbox

if TYPE_CHECKING:
    from alembic.operations import Operations


def create_ledger(op: Operations) -> None:
    m0001_ledger.upgrade(op)


def move_legacy_ledger(op: Operations, workflow: str) -> None:
    """Rows of the ledger keyed by order id become rows keyed by saga id."""
    op.execute(
        "INSERT INTO sagaflow_ledger (saga_id, step, status, payload, updated_at) "
        f"SELECT '{workflow}-' || CAST(order_id AS VARCHAR(20)), step, status, payload, "
        "updated_at FROM saga_ledger"
    )
    op.drop_table("saga_ledger")


def create_saga_log(op: Operations) -> None:
    m0002_saga_log.upgrade(op)


def drop_saga_log(op: Operations) -> None:
    op.drop_table("sagaflow_steps")
    op.drop_table("sagaflow_instances")


def create_operator_actions(op: Operations) -> None:
    m0003_operator_actions.upgrade(op)


def create_outbox(op: Operations) -> None:
    m0004_outbox.upgrade(op)
