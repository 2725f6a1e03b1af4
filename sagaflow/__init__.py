"""sagaflow: a small saga runtime on Celery and Redis, with no knowledge of any shop.

A workflow is declared once (sagaflow._workflow): an ordered list of steps, each with its
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

# The contract: what is named here (and in `__all__`). Every `_`-prefixed module is the
# runtime's own and may change in any release. Besides this module, the public modules
# are `sagaflow.celery_app` (the Celery adapter), `sagaflow.testing` (in-process fakes),
# `sagaflow.schema` and `sagaflow.migrations` (its tables), `sagaflow.metrics` (the
# `metrics` extra) and `sagaflow.dlq` (the dead-letter queue, its alerts and CLI).
from sagaflow._context import current_work, working_on
from sagaflow._db import Database, UnusableDatabaseURL, open_database
from sagaflow._errors import (
    AlreadyCompensated,
    DeclarationError,
    NotApplicable,
    SagaError,
    StepTimeout,
    TransientError,
    UnknownVersion,
    WorkerLostTooOften,
    error_text,
)
from sagaflow._events import Event, EventLog, Phase, RedisKeys
from sagaflow._faults import (
    HOLD_KEY,
    LIVE_KEY,
    NO_FAULTS,
    FaultInjector,
    LiveFaultInjector,
    parse_faults,
)
from sagaflow._ledger import apply_once, compensate_once, ledger_table, utcnow
from sagaflow._log import SagaBase, SagaInstance, SagaLog, SagaStepRow
from sagaflow._orchestrator import Orchestrator
from sagaflow._outbox import enqueue, outbox_table, start_message, stream_message
from sagaflow._projector import Hooks, Projector
from sagaflow._runner import Runner
from sagaflow._runtime import Runtime, RuntimeSettings, Settings, home_of
from sagaflow._starts import PendingStart, Starts
from sagaflow._status import SagaStatus, StepStatus, WorkKind
from sagaflow._workflow import (
    DEFAULT_RETRY,
    Compensation,
    RetryPolicy,
    Step,
    Workflow,
    plan_of,
    services_of,
    workflow_of,
)

__all__ = [
    "DEFAULT_RETRY",
    "HOLD_KEY",
    "LIVE_KEY",
    "NO_FAULTS",
    "AlreadyCompensated",
    "Compensation",
    "Database",
    "DeclarationError",
    "Event",
    "EventLog",
    "FaultInjector",
    "Hooks",
    "LiveFaultInjector",
    "NotApplicable",
    "Orchestrator",
    "PendingStart",
    "RedisKeys",
    "Phase",
    "Projector",
    "RetryPolicy",
    "Runner",
    "Runtime",
    "RuntimeSettings",
    "SagaBase",
    "SagaError",
    "SagaInstance",
    "SagaLog",
    "SagaStatus",
    "SagaStepRow",
    "Settings",
    "Starts",
    "Step",
    "StepStatus",
    "StepTimeout",
    "TransientError",
    "UnknownVersion",
    "UnusableDatabaseURL",
    "WorkKind",
    "WorkerLostTooOften",
    "Workflow",
    "apply_once",
    "compensate_once",
    "current_work",
    "enqueue",
    "error_text",
    "home_of",
    "ledger_table",
    "open_database",
    "outbox_table",
    "parse_faults",
    "plan_of",
    "services_of",
    "start_message",
    "stream_message",
    "utcnow",
    "workflow_of",
    "working_on",
]
