"""A workflow, declared once: its context type and an ordered list of steps, each paired
with the compensation that undoes it, the queue (service) it runs on and its retry policy.

    ORDER = Workflow(
        name="order",
        context=OrderContext,               # a pydantic model: what every step receives
        key=lambda ctx: ctx.order_id,       # the business key: saga id "order-42"
        home="orders",                      # the service whose database keeps the saga log
        steps=[
            Step("create_order", "orders", create_order, Compensation("cancel_order", cancel)),
            Step("decrease_stock", "products", take, Compensation("restore_stock", put_back)),
            ...
            Step("publish_order", "dataplatform", publish),  # after the pivot: no undo
        ],
    )

The pivot is the last step with a compensation: once it applied, the saga is COMPLETED,
and the steps after it are retried until they succeed, never compensated.

A saga runs, from start to end, by the plan of the version it started on. A build keeps
the earlier plans it still runs as values, passed with the current one:

    ORDER_V1 = Workflow(name="order", ..., steps=[...as they were...])
    ORDER = Workflow(name="order", ..., steps=[...], earlier=(ORDER_V1,))

`ORDER.plan(version)` is the plan a saga of that version runs; everything that takes the
workflows (the Runtime, the Celery adapter, the projector) knows the earlier ones through
it. A version nobody passes any more is one this build refuses (UnknownVersion).

A step's action takes the services of the process it runs in (`services.<name>`, what
the owner's composition root built) and the context, and returns (context, detail): the
context the next step gets, and one line for the timeline (None: skipped). A compensation
takes the services and the saga id and returns what it undid.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from sagaflow._errors import DeclarationError, UnknownVersion
from sagaflow._status import WorkKind

# `services`: whatever the workflow's owner hands the runner (the shop: app.bootstrap's
# Services), reached by attribute; typed Any because each owner has its own.
Action = Callable[[Any, Any], tuple[Any, str | None]]
Undo = Callable[[Any, str], str]


@dataclass(frozen=True)
class RetryPolicy:
    """Celery's autoretry for one step (whole seconds: delay = random(0, min(max, base*2^n))),
    and its time limits. None: the process's defaults (settings).

    Part of the plan a saga runs by: a saga started on an earlier version is retried, and
    timed, by that version's declaration, whichever is current on the worker."""

    max_retries: int | None = None
    backoff: int | None = None
    backoff_max: int | None = None
    jitter: bool | None = None
    soft_time_limit: float | None = None
    time_limit: float | None = None

    def over(self, defaults: RetryPolicy) -> RetryPolicy:
        """This policy with what it leaves to the defaults filled in from them."""
        return RetryPolicy(
            **{
                name: getattr(defaults, name) if value is None else value
                for name, value in vars(self).items()
            }
        )

    @property
    def time_limits(self) -> dict[str, float]:
        """The limits it declares itself, as Celery's per-message options (a message that
        carries them is timed by them; one that does not, by the worker's settings)."""
        limits = {"soft_time_limit": self.soft_time_limit, "time_limit": self.time_limit}
        return {name: value for name, value in limits.items() if value is not None}


# A whole policy, for a team without settings of its own: four retries with full jitter
# (1, 2, 4, 8 s at most), a soft limit of 10 s inside the step and a hard one of 20 s.
DEFAULT_RETRY = RetryPolicy(
    max_retries=4, backoff=1, backoff_max=30, jitter=True, soft_time_limit=10.0, time_limit=20.0
)


def _event_name(name: str, suffix: str) -> str:
    return "".join(part.capitalize() for part in name.split("_")) + suffix


@dataclass(frozen=True)
class Compensation:
    name: str
    undo: Undo
    event: str = ""  # what it announces when done (choreography); default "<Name>Done"

    def __post_init__(self) -> None:
        if not self.event:
            object.__setattr__(self, "event", _event_name(self.name, "Done"))


@dataclass(frozen=True)
class Step:
    name: str
    queue: str  # the owning service, and the queue its tasks (and its compensation) run on
    action: Action
    compensation: Compensation | None = None  # None: after the pivot, retried not undone
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # The events it announces in choreography: done, and refused (a business error).
    event: str = ""
    failure_event: str = ""

    def __post_init__(self) -> None:
        if not self.event:
            object.__setattr__(self, "event", _event_name(self.name, "Done"))
        if not self.failure_event:
            object.__setattr__(self, "failure_event", _event_name(self.name, "Refused"))


@dataclass(frozen=True)
class Workflow:
    name: str
    context: type[BaseModel]
    key: Callable[[Any], Any]
    home: str  # the service whose database holds this workflow's saga log
    steps: tuple[Step, ...]
    # Exceptions that are an expected refusal (out of stock...): never retried, the saga
    # turns back. Retryable: infrastructure errors that may succeed on a second try.
    business_errors: tuple[type[BaseException], ...] = ()
    retryable: tuple[type[BaseException], ...] = ()
    # Recorded with each saga when it starts. Declared ("2"), or derived from the plan (the
    # steps, their services and compensations, in order): a change to the plan is a new
    # version whether or not anybody remembered to say so.
    version: str = ""
    # The earlier versions this build still runs sagas of (each the declaration as it was,
    # kept as a value): a saga started on one of them runs and is undone by its own plan.
    # Drop one once `sagaflow_sagas_in_flight{version=...}` reads zero. An earlier version's
    # own `earlier` are kept too (declarations are copied as they were), so dropping the
    # oldest means dropping it where it is listed. A field of the workflow rather than an
    # argument of the Runtime: every place that takes the workflows (the Runtime, the
    # Celery adapter, the projector, the CLI) then knows them, with nothing else to wire.
    earlier: tuple[Workflow, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
        object.__setattr__(self, "earlier", tuple(self.earlier))
        if not self.version:
            object.__setattr__(self, "version", self.plan_version)
        self._check_earlier()
        names = [s.name for s in self.steps] + [c.name for c in self.compensations]
        if len(names) != len(set(names)):
            raise DeclarationError(
                f"workflow {self.name}: step and compensation names must be unique"
            )
        if not any(s.compensation for s in self.steps):
            raise DeclarationError(f"workflow {self.name}: at least one step needs a compensation")
        seen_final = False
        for step in self.steps:
            if step.compensation is None:
                seen_final = True
            elif seen_final:
                raise DeclarationError(
                    f"workflow {self.name}: {step.name} has a compensation after a step that"
                    " has none; steps after the pivot cannot be undone"
                )

    def _check_earlier(self) -> None:
        plans: dict[str, Workflow] = {self.version: self}
        for older in self.earlier:
            for wf in (older, *older.versions.values()):
                if wf.name != self.name:
                    raise DeclarationError(
                        f"workflow {self.name}: an earlier version must be of the same"
                        f" workflow, not {wf.name}"
                    )
                if wf.home != self.home:
                    raise DeclarationError(
                        f"workflow {self.name}: version {wf.version} keeps its log in"
                        f" {wf.home}, not {self.home}; a workflow's versions share one home"
                    )
                known = plans.setdefault(wf.version, wf)
                if known is not wf and known.plan_version != wf.plan_version:
                    raise DeclarationError(
                        f"workflow {self.name}: two different plans are both version {wf.version}"
                    )
        # Flat, current first: version -> the plan a saga started on it runs.
        object.__setattr__(self, "_plans", plans)

    # --- versions --------------------------------------------------------------------------

    @property
    def versions(self) -> dict[str, Workflow]:
        """Every version this declaration runs, by version, the current one first."""
        plans: dict[str, Workflow] = self.__dict__["_plans"]
        return plans

    @property
    def known_versions(self) -> list[str]:
        return list(self.versions)

    def plan(self, version: str | None) -> Workflow:
        """The plan a saga of `version` runs by. No version (work sent before versions
        were carried, or a saga recorded before they were kept): the current plan, as
        before. A version this build does not know: UnknownVersion, never a guess."""
        if not version:
            return self
        found = self.versions.get(version)
        if found is None:
            raise UnknownVersion(self.name, version, self.known_versions)
        return found

    def any_plan_with(self, name: str) -> Workflow | None:
        """The newest known version that has step or compensation `name` (what a task
        named after it is, when the saga's own version is not known)."""
        return next((wf for wf in self.versions.values() if wf.knows(name)), None)

    # --- reading the declaration ---------------------------------------------------

    @property
    def plan_version(self) -> str:
        """A short digest of the plan: what a saga started on it will run, and undo."""
        plan = [
            [s.name, s.queue, s.compensation.name if s.compensation else None] for s in self.steps
        ]
        return "p" + hashlib.sha256(json.dumps(plan).encode()).hexdigest()[:10]

    @property
    def compensations(self) -> list[Compensation]:
        return [s.compensation for s in self.steps if s.compensation]

    @property
    def step_names(self) -> list[str]:
        return [s.name for s in self.steps]

    @property
    def compensation_names(self) -> list[str]:
        return [c.name for c in self.compensations]

    @property
    def pivot(self) -> str:
        return [s.name for s in self.steps if s.compensation][-1]

    @property
    def queues(self) -> list[str]:
        return list(dict.fromkeys(s.queue for s in self.steps))

    @property
    def services(self) -> list[str]:
        """Every service this workflow needs, in order: its home (the saga log) first,
        then each step's (a step's queue is its service's), then those only an earlier
        version still in flight needs (its steps must still be run or undone there)."""
        older = [q for wf in list(self.versions.values())[1:] for q in wf.queues]
        return list(dict.fromkeys([self.home, *self.queues, *older]))

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def undoing(self, compensation: str) -> Step:
        """The step a compensation undoes."""
        for step in self.steps:
            if step.compensation and step.compensation.name == compensation:
                return step
        raise KeyError(compensation)

    def knows(self, name: str) -> bool:
        return name in self.step_names or name in self.compensation_names

    def queue_of(self, name: str) -> str:
        """A compensation runs on its step's service."""
        return self.step(name).queue if name in self.step_names else self.undoing(name).queue

    def retry_of(self, name: str) -> RetryPolicy:
        """The retry policy of a step, or of the step a compensation undoes (a compensation
        runs by its step's)."""
        return (self.step(name) if name in self.step_names else self.undoing(name)).retry

    def kind_of(self, name: str) -> WorkKind:
        if name in self.compensation_names:
            return WorkKind.COMPENSATION
        return WorkKind.STEP if self.step(name).compensation else WorkKind.AFTER_PIVOT

    def steps_after(self, name: str) -> list[str]:
        names = self.step_names
        return names[names.index(name) + 1 :]

    def compensations_for(self, failed_step: str) -> list[str]:
        """What turning back at `failed_step` runs, newest first: the compensation of every
        step up to and including it. The failed step's own compensation voids it (it may
        or may not have applied: a timeout can strike after the commit), so that a late
        delivery of it refuses to apply; the same holds for a step that never applied."""
        names = self.step_names
        upto = self.steps[: names.index(failed_step) + 1]
        return [s.compensation.name for s in reversed(upto) if s.compensation]

    def event_of(self, name: str) -> str:
        """The event a step or compensation announces when it is done."""
        if name in self.step_names:
            return self.step(name).event
        compensation = self.undoing(name).compensation
        assert compensation is not None  # undoing() finds only steps with a compensation
        return compensation.event

    def compensations_after(self, compensation: str, plan: list[str]) -> list[str]:
        return plan[plan.index(compensation) + 1 :] if compensation in plan else []

    # --- saga ids ------------------------------------------------------------------------

    # The one place a saga id is made and read: "<workflow>-<business key>".

    def saga_id(self, ctx: Any) -> str:
        return self.saga_id_for(self.key(ctx))

    def saga_id_for(self, business_key: Any) -> str:
        return f"{self.name}-{business_key}"

    def owns(self, saga_id: str) -> bool:
        return saga_id.startswith(f"{self.name}-")

    def business_key(self, saga_id: str) -> str:
        return saga_id.removeprefix(f"{self.name}-")

    def parse(self, data: dict[str, Any] | BaseModel) -> BaseModel:
        return data if isinstance(data, self.context) else self.context.model_validate(data)


def services_of(workflows: Iterable[Workflow]) -> tuple[str, ...]:
    """The services a set of workflows needs, each once, in declaration order: the one
    list settings, schema, workers and tests read, so adding a step on a new service is
    the step and its service, nothing else."""
    return tuple(dict.fromkeys(name for wf in workflows for name in wf.services))


def plan_of(workflows: Mapping[str, Workflow], name: str, version: str | None) -> Workflow:
    """The plan a saga of workflow `name` started on `version` runs by (Workflow.plan):
    KeyError for a workflow this process does not run, UnknownVersion for a version it
    does not know."""
    return workflows[name].plan(version)


def workflow_of(workflows: Mapping[str, Workflow], saga_id: str) -> Workflow | None:
    """The workflow a saga id belongs to. The longest name wins, so that `refund` and
    `refund-request` can live side by side."""
    owners = [wf for wf in workflows.values() if wf.owns(saga_id)]
    return max(owners, key=lambda wf: len(wf.name)) if owners else None
