"""The front door: one object per process, built from the workflows, their hooks, one
database per service the process serves, Redis and the settings. It wires the runtime the
same way for every process, and hands each process what it runs:

    runtime = Runtime(
        WORKFLOWS, hooks=HOOKS, databases={"wallet": wallet_db}, outboxes={"wallet": Outbox},
        redis=redis_client, services=my_services, dispatcher=celery_app.dispatcher,
    )
    runtime.starts.start(TOPUP)      # an API handler: start a saga (sagaflow/_starts.py)
    runtime.runner                   # a worker: what its tasks run (celery_app.install)
    runtime.orchestrator().run(stop) # the saga log's keeper and the stall check
    runtime.relay().run(stop)        # what the outboxes hold, sent

`databases` are the handles of the services this process serves: anything with
`write()` and `read()` context managers yielding SQLAlchemy sessions. `outboxes` names
each service's outbox table (sagaflow._outbox.outbox_table); `services` is what steps
receive as their first argument. The home of the workflows (where the saga log lives)
is read from their declarations.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

from redis import Redis

from sagaflow._choreography import CHOREOGRAPHY, Choreography
from sagaflow._db import DatabaseHandle
from sagaflow._errors import DeclarationError
from sagaflow._events import KEYS_GRACE_SECONDS, EventLog, RedisKeys
from sagaflow._faults import NO_FAULTS, FaultInjector
from sagaflow._log import SagaLog
from sagaflow._orchestrator import Orchestrator, StallCheck
from sagaflow._outbox import AfterCommit, Outbox, Relay, Wakeup
from sagaflow._projector import Hooks, Projector
from sagaflow._runner import Dispatcher, Runner
from sagaflow._sending import sender
from sagaflow._starts import Starts
from sagaflow._workflow import Workflow
from sagaflow.dlq.store import DeadLetterStore

if TYPE_CHECKING:
    from sagaflow.metrics import MetricsRecorder  # prometheus_client: only where it is used


class RuntimeSettings(Protocol):
    """What the runtime reads from a settings object (the shop's config.settings.Settings
    has these, and so does sagaflow._runtime.Settings). Read-only: a frozen dataclass will do."""

    @property
    def saga_mode(self) -> str: ...
    @property
    def saga_stall_seconds(self) -> float: ...
    @property
    def saga_stall_check_seconds(self) -> float: ...
    @property
    def outage_budget_seconds(self) -> float: ...
    @property
    def outbox_lease_seconds(self) -> float: ...
    @property
    def outbox_max_attempts(self) -> int: ...
    @property
    def outbox_poll_interval(self) -> float: ...
    @property
    def outbox_idle_poll_seconds(self) -> float: ...
    @property
    def dlq_backoff(self) -> float: ...
    @property
    def dlq_backoff_max(self) -> float: ...
    @property
    def saga_keys_grace_seconds(self) -> float: ...


@dataclass(frozen=True)
class Settings:
    """The runtime's settings with their defaults, for a team without its own object."""

    saga_mode: str = "orchestration"
    saga_stall_seconds: float = 300.0
    saga_stall_check_seconds: float = 30.0
    outage_budget_seconds: float = 1800.0
    outbox_lease_seconds: float = 30.0
    outbox_max_attempts: int = 10
    outbox_poll_interval: float = 0.2
    outbox_idle_poll_seconds: float = 30.0
    dlq_backoff: float = 5.0
    dlq_backoff_max: float = 300.0
    # How long a final saga's markers, inputs and fence are kept (sagaflow._events).
    saga_keys_grace_seconds: float = float(KEYS_GRACE_SECONDS)
    # Read by the Celery adapter (sagaflow.celery_app.install): the DLQ's attempts after a
    # step's own, and the longest retry delay (what an outage's wait is measured against).
    dlq_max_attempts: int = 5
    step_retry_backoff_max: int = 30
    # How long work of a version this build does not know goes back to its queue for a
    # worker that knows it, before it is dead-lettered with the reason.
    unknown_version_wait_seconds: float = 600.0


def dlq_backoff(settings: RuntimeSettings) -> Callable[[int], float]:
    """How long the DLQ waits before its next try of an entry, by the attempts so far."""

    def backoff(attempts: int) -> float:
        delay: float = settings.dlq_backoff * (2**attempts)
        return min(settings.dlq_backoff_max, delay)

    return backoff


def home_of(workflows: Mapping[str, Workflow]) -> str:
    """The service whose database keeps the saga log: one per Runtime (its stream, group
    and lock are named after it, RedisKeys.of_home); workflows with another home get a
    Runtime of their own, on the same Redis without sharing a key."""
    homes = {wf.home for wf in workflows.values()}
    if len(homes) != 1:
        raise DeclarationError(f"the workflows must share one home service, not {sorted(homes)}")
    return homes.pop()


class Runtime:
    def __init__(
        self,
        workflows: Mapping[str, Workflow],
        *,
        databases: Mapping[str, DatabaseHandle],
        outboxes: Mapping[str, type[Any]],
        redis: Redis,
        services: Any,
        dispatcher: Dispatcher,
        settings: RuntimeSettings | None = None,
        hooks: Mapping[str, Hooks] | None = None,
        faults: FaultInjector = NO_FAULTS,
        metrics: MetricsRecorder | None = None,
        name: str = "",
    ) -> None:
        self.workflows = dict(workflows)
        self.home = home_of(self.workflows)
        # The saga log's stream, group and lock, named after its home (sagaflow._events).
        self.keys = RedisKeys.of_home(self.home)
        self.databases, self.redis = dict(databases), redis
        self.settings: RuntimeSettings = settings or Settings()
        self.hooks = dict(hooks or {})
        self.metrics = metrics  # a sagaflow.metrics.MetricsRecorder for the projector, or None
        self.outboxes = [
            Outbox(service, db, outboxes[service], self.settings.outbox_lease_seconds)
            for service, db in self.databases.items()
            if service in outboxes
        ]
        self.runner = Runner(
            self.workflows,
            services,
            EventLog(redis, self.keys.stream),
            DeadLetterStore(redis, dlq_backoff(self.settings)),
            dispatcher,
            faults,
            worker=f"{socket.gethostname()}:{name or ','.join(self.databases) or '-'}",
            outage_budget=self.settings.outage_budget_seconds,
        )
        if self.outboxes:
            # The work sends what it writes to its service's outbox itself, right after it
            # succeeded: the relay is the fallback. In choreography, each service's work
            # announces the next through that outbox.
            fast_path = self.relay()
            self.runner.after_commit = AfterCommit(fast_path)
            if self.settings.saga_mode == CHOREOGRAPHY:
                self.runner.announcer = Choreography(
                    {o.service: o for o in self.outboxes}, fast_path
                )

    def _home_db(self) -> DatabaseHandle:
        db = self.databases.get(self.home)
        if db is None:
            raise DeclarationError(
                f"this process does not serve {self.home!r}, the home of the saga log"
            )
        return db

    def relay(self) -> Relay:
        """A relay over the outboxes of the services this process serves. A new one each
        call: the relay process's loop keeps its own state (what it owes)."""
        return Relay(
            self.outboxes,
            sender(self.runner),
            lambda outbox, row, error: self.runner.park_message(outbox.service, row, error),
            max_attempts=self.settings.outbox_max_attempts,
            poll=self.settings.outbox_poll_interval,
            wakeup=Wakeup(self.redis),
            idle_poll=self.settings.outbox_idle_poll_seconds,
        )

    @cached_property
    def starts(self) -> Starts:
        """Where an API handler starts sagas (sagaflow/_starts.py)."""
        return Starts(self.workflows, self.relay(), self.runner.faults)

    @cached_property
    def saga_log(self) -> SagaLog:
        return SagaLog(self._home_db(), self.workflows)

    def projector(self) -> Projector:
        return Projector(
            self._home_db(),
            self.redis,
            self.workflows,
            self.hooks,
            self.metrics,
            keys=self.keys,
            legacy=RedisKeys(),  # the names before they were per home: drained, then idle
            keys_grace=self.settings.saga_keys_grace_seconds,
        )

    def orchestrator(self) -> Orchestrator:
        """The saga log's keeper (the projector) and the stall check, in one loop."""
        home = next((o for o in self.outboxes if o.service == self.home), None)
        stall = StallCheck(
            self.saga_log,
            self.runner,
            self.settings.saga_stall_seconds,
            home.unsent_keys if home else None,
        )
        return Orchestrator(self.projector(), stall, self.settings.saga_stall_check_seconds)
