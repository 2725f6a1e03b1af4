"""The states a saga and each of its steps can be in."""

from __future__ import annotations

from enum import StrEnum


class SagaStatus(StrEnum):
    PENDING = "PENDING"  # moving forward
    COMPLETED = "COMPLETED"  # the pivot applied; steps after it (if any) are retried, never undone
    COMPENSATING = "COMPENSATING"  # turned back: undoing, newest first
    FAILED = "FAILED"  # turned back and every compensation done
    NEEDS_ATTENTION = "NEEDS_ATTENTION"  # work is parked in the DLQ and the saga cannot move


# No forward step may apply once a saga is in one of these.
TURNED_BACK = (SagaStatus.COMPENSATING, SagaStatus.FAILED)


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"
    FAILED = "failed"  # a business error: not retried; the saga turns back
    DEAD_LETTERED = "dead_lettered"  # retries ran out: parked in the DLQ
    REFUSED = "refused"  # a late or duplicate delivery that must not apply
    NOT_RUN = "not_run"  # a forward step the saga turned back before reaching


DONE = (StepStatus.SUCCEEDED, StepStatus.SKIPPED)
# Nothing more will happen to a row in one of these.
SETTLED = (*DONE, StepStatus.REFUSED, StepStatus.NOT_RUN)
# Work in one of these is still owed: running it, its retry, or routing its failure.
OWED = (StepStatus.PENDING, StepStatus.RUNNING, StepStatus.RETRYING, StepStatus.FAILED)


class WorkKind(StrEnum):
    """How a piece of work is treated when it fails."""

    STEP = "step"  # a forward step before the pivot: undone if the saga turns back
    AFTER_PIVOT = "after_pivot"  # after the saga completed: retried, never undone
    COMPENSATION = "compensation"
