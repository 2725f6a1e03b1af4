"""sagaflow: a small saga runtime on Celery and Redis, with no knowledge of any shop.

A workflow is declared once (sagaflow.workflow): an ordered list of steps, each with its
compensation, its queue and its retry policy. The runtime owns the rest: the saga log
(its own tables in the home service's database, kept by the orchestrator from the workers'
events), the idempotency ledger (in each service's database), the Celery tasks and
chains, the fence that stops a saga that turned back, the dead-letter queue with its
worker, alerts and CLI, the stall check, and fault injection.

    from sagaflow import Compensation, Step, Workflow

Installed on its own from `packaging/sagaflow` (`pip install ./packaging/sagaflow`, extras
`slack`, `metrics`, `cli`, `testing`); the shop in this repository is one user of it.
"""

__version__ = "0.1.0"

from sagaflow.errors import (
    AlreadyCompensated,
    DeclarationError,
    NotApplicable,
    SagaError,
    StepTimeout,
    TransientError,
)
from sagaflow.events import Event, EventLog, Phase
from sagaflow.ledger import apply_once, compensate_once, ledger_table
from sagaflow.log import SagaLog
from sagaflow.projector import Hooks, Projector
from sagaflow.runner import Runner
from sagaflow.status import SagaStatus, StepStatus, WorkKind
from sagaflow.workflow import Compensation, RetryPolicy, Step, Workflow

__all__ = [
    "AlreadyCompensated",
    "Compensation",
    "DeclarationError",
    "Event",
    "EventLog",
    "Hooks",
    "NotApplicable",
    "Phase",
    "Projector",
    "RetryPolicy",
    "Runner",
    "SagaError",
    "SagaLog",
    "SagaStatus",
    "Step",
    "StepStatus",
    "StepTimeout",
    "TransientError",
    "WorkKind",
    "Workflow",
    "apply_once",
    "compensate_once",
    "ledger_table",
]
