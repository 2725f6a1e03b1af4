"""The Celery adapter: one task per step and per compensation of a workflow, a chain with a
link_error callback on every signature, and the delivery guarantees they all share.

    app = Celery("shop", broker=...)
    app.conf.update(delivery_conf(visibility_timeout=120, restore_interval=10))
    sagas = install(app, [ORDER], defaults=RetryPolicy(...), runner=build_runner)

`runner` builds the process's Runner (engines, Redis client) in each pool child as it
starts, so nothing created before a fork is shared with the children and no task pays for
(or times out on) opening the databases.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, Protocol

from celery import Celery, Task, chain
from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded
from celery.signals import worker_process_init
from celery.utils.time import get_exponential_backoff_interval
from kombu.entity import Queue

from sagaflow import tracing
from sagaflow._context import working_on
from sagaflow._dependencies import unreachable
from sagaflow._errors import (
    AlreadyCompensated,
    DependencyUnreachable,
    InjectedBusinessError,
    UnknownVersion,
    WorkerLostTooOften,
    error_text,
)
from sagaflow._runner import Runner
from sagaflow._status import WorkKind
from sagaflow._workflow import RetryPolicy, Workflow, plan_of


class AdapterSettings(Protocol):
    """What the adapter reads from the settings object (sagaflow._runtime.Settings has it)."""

    @property
    def outage_budget_seconds(self) -> float: ...

    @property
    def dlq_max_attempts(self) -> int: ...

    @property
    def unknown_version_wait_seconds(self) -> float: ...


log = logging.getLogger("sagaflow.tasks")
STEP_FAILED = "sagaflow.step_failed"


def delivery_conf(
    visibility_timeout: int,
    restore_interval: int,
    queues: list[str],
    start_timeout: float = 60,
    task_events: bool = False,
) -> dict[str, Any]:
    """How every message is delivered: acknowledged only after the work is done, given
    back if the worker dies, one at a time, JSON only, no result backend. Task events
    (for Flower) only if asked for: a monitor that wants them turns them on remotely."""
    return dict(
        # A pool child opens its databases before it says it is up (Sagas.start_child);
        # Celery's 4 s default would kill a child whose database is slow to answer.
        worker_proc_alive_timeout=start_timeout,
        task_serializer="json",
        accept_content=["json"],
        # Nobody reads task results: the saga log is the record. No backend, no writes.
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # A message whose task kills its worker every time counts each loss as a retry, so
        # it ends in the DLQ instead of being redelivered forever.
        task_retry_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=[Queue(name) for name in queues],
        task_default_queue=queues[0],
        broker_transport_options={
            "visibility_timeout": visibility_timeout,
            "unacked_restore_interval": restore_interval,
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        worker_send_task_events=task_events,
        task_send_sent_event=task_events,
        worker_hijack_root_logger=False,
        enable_utc=True,
    )


class Sagas:
    """What the tasks of one Celery app share: the workflows and the process's Runner."""

    def __init__(
        self,
        workflows: list[Workflow],
        build_runner: Callable[[], Runner],
        settings: AdapterSettings,
        warm_up: Callable[[Runner], None] | None = None,
    ) -> None:
        self.workflows = {wf.name: wf for wf in workflows}
        self._build, self.settings = build_runner, settings
        self._warm_up = warm_up or (lambda runner: None)
        self._runner: Runner | None = None
        self._lock = threading.Lock()

    def plan(self, workflow: str, version: str | None) -> Workflow:
        """The plan a message's saga runs by: its version's (Workflow.plan)."""
        return plan_of(self.workflows, workflow, version)

    @property
    def runner(self) -> Runner:
        if self._runner is None:
            with self._lock:
                if self._runner is None:
                    self._runner = self._build()
        return self._runner

    def reset(self) -> None:
        """Forget (without closing) what the parent built: its sockets belong to it."""
        self._runner = None

    def start_child(self) -> None:
        """A pool child builds its runtime and opens its connections as it starts, outside
        any task's time limit: a slow database then delays the child, not a saga."""
        self.reset()
        try:
            runner = self.runner
        except Exception as exc:
            # A setting that cannot work: every task of this child would fail. Say so and
            # stop the child rather than take work it cannot do.
            log.critical("worker child cannot build its runtime, exiting: %s", error_text(exc))
            logging.shutdown()
            os._exit(3)
        self._warm_up(runner)


# Celery is untyped (no py.typed, no stubs): its Task is Any to mypy.
class SagaTask(Task):  # type: ignore[misc]
    """Acknowledge only after the work is done, and re-queue it if the worker dies: every
    step is idempotent, so a redelivery is safe. Written once here for every task: every
    exception a task raises, before or during its work, is routed the same way (a retry
    with backoff, then the DLQ), and an unreachable dependency spends no attempt."""

    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    workflow: Workflow | None = None
    work: str = ""
    service: str = ""
    # This work's retry policy in each version that has it, the defaults filled in: a
    # message is retried by its saga's own version's (the task's own attributes are the
    # newest declaration's, what Celery reads where no saga version is at hand).
    policies: dict[str, RetryPolicy] = {}

    @property
    def sagas(self) -> Sagas:
        sagas: Sagas = self.app.sagas
        return sagas

    @property
    def runner(self) -> Runner:
        return self.sagas.runner

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        dlq_entry = kwargs.get("dlq_entry", "")
        saga_id = kwargs.get("saga_id") or (args[0] if args and isinstance(args[0], str) else "")
        fields = f"saga_id={saga_id} step={self.work} task_id={self.request.id}"
        ran = False
        # The plan of the saga's own version, which the message carries (none: sent before
        # versions were carried, so the current plan, as then). A version this worker does
        # not know is never run by another plan: the message goes back to the queue.
        wf: Workflow | None = None
        if self.workflow is not None:
            try:
                wf = self.workflow.plan(kwargs.get("version"))
            except UnknownVersion as unknown:
                self._unknown_version(unknown, self.work, saga_id, args, kwargs, fields)
        try:
            mid = kwargs.get("message_id")
            if mid and not self.runner.events.first_delivery(saga_id, mid, self.request.id):
                # The same outbox message sent twice (a relay crashed after sending it): the
                # saga it starts already runs. A redelivery of this very task is not this.
                log.info("duplicate message %s dropped %s", mid, fields)
                raise Ignore()
            if wf is not None and not dlq_entry:
                self._within_its_versions_retries(wf)
            # A retry from the DLQ is one attempt: the DLQ counts and spaces them.
            own_run: Callable[..., Any] = self.run
            run = getattr(self, "_orig_run", own_run) if dlq_entry else own_run
            ran = True
            # Call run() directly: Task.__call__ would push a fresh request and lose the
            # retry count that bounds autoretry.
            with working_on(
                saga_id=saga_id,
                workflow=wf.name if wf else None,
                step=self.work or self.name,
                attempt=self.request.retries + 1,
                task_id=self.request.id,
            ):
                self._traced(saga_id, dlq_entry, wf)
                result = run(*args, **kwargs)
        except Ignore:
            tracing.note(outcome="ignored")
            raise
        except Reject as reject:
            if reject.requeue or not isinstance(reject.reason, Exception):
                raise
            # Celery could not publish the retry (the broker went away mid-task) and would
            # drop the message. Keep it: requeued, or, if even that cannot reach Redis,
            # left unacknowledged for the broker to deliver again after its visibility
            # timeout.
            log.warning(
                "could not send the retry of %s (%s); the message is kept for redelivery",
                fields,
                error_text(reject.reason),
            )
            raise Reject(reject.reason, requeue=True) from None
        except Retry as retry:
            tracing.note(outcome="retrying", failure_class=self._failure_class(retry.exc, wf))
            log.warning(
                "retrying %s attempt=%s in=%ss error=%r",
                fields,
                self.request.retries + 1,
                retry.when,
                str(retry.exc),
            )
            raise
        except AlreadyCompensated:
            tracing.note(outcome="refused")
            log.info("ignored late delivery %s: the saga is being or was undone", fields)
            raise Ignore() from None
        except Exception as exc:
            if wf is None:
                log.error("failed %s error=%r", fields, str(exc))
                raise
            wrapped = isinstance(exc, DependencyUnreachable)
            down: str | None
            error: BaseException = exc
            if isinstance(exc, DependencyUnreachable):
                down, error = exc.dependency, exc.error
            else:
                down = unreachable(exc, self.service)
            tracing.failed(error, outcome="failed", failure_class=self._failure_class(error, wf))
            if down:
                self._wait_for(down, error, args, kwargs, fields)  # raises unless spent
            elif not ran:
                # It failed before the work began (reaching Redis, building the runtime):
                # nothing applied, so it is retried like a timeout, within the same budget.
                self._retry_before_run(error, fields, wf)
            self._failed(error, args, kwargs, dlq_entry, fields, wf)
            if wrapped:
                raise error from None  # the real error, as the callback should see it
            raise
        self._back_from_outage()
        tracing.note(outcome="succeeded")
        return result

    def _traced(self, saga_id: str, dlq_entry: str, wf: Workflow | None) -> None:
        """The task's span (opentelemetry-instrumentation-celery's) says which saga work it is."""
        if not tracing.enabled():
            return
        tracing.note(
            id=saga_id,
            workflow=wf.name if wf else None,
            version=wf.version if wf else None,
            step=self.work or None,
            kind=str(wf.kind_of(self.work)) if wf and self.work else None,
            attempt=self.request.retries + 1,
            **{"dlq.entry": dlq_entry},
        )

    def _failure_class(self, exc: BaseException | None, wf: Workflow | None) -> str:
        """Which of the failure classes an error is, as a span says it."""
        if exc is None or wf is None:
            return "error"
        if isinstance(exc, DependencyUnreachable) or unreachable(exc, self.service):
            return "dependency"
        if self.runner.is_business(wf, exc):
            return "business"
        if isinstance(exc, SoftTimeLimitExceeded):
            return "timeout"
        return "retryable" if isinstance(exc, wf.retryable) else "error"

    # --- an unreachable dependency ---------------------------------------------------

    def _wait_for(
        self,
        dependency: str,
        exc: BaseException,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        fields: str,
    ) -> None:
        """Send the same work again after a backoff without spending an attempt, until the
        outage budget is spent (then return: the work fails as any other would)."""
        settings, now = self.sagas.settings, time.time()
        outage = dict(kwargs.get("outage") or {})
        since = float(outage.get("since") or now)
        self._outages_seen.add(dependency)
        self.runner.outages.record(dependency, exc)
        if kwargs.get("dlq_entry") or now - since >= settings.outage_budget_seconds:
            return
        tries = int(outage.get("tries") or 0)
        delay = self._backoff(tries)
        log.warning(
            "%s unreachable; waiting %s attempt=%s in=%ss for %.0fs so far error=%r",
            dependency,
            fields,
            self.request.retries + 1,
            delay,
            now - since,
            error_text(exc),
        )
        # The same attempt again: an outage is not the work's failure.
        again = {**kwargs, "outage": {"since": since, "tries": tries + 1}}
        self._send_again(args, again, delay, exc, f"the wait of {fields}")

    def _send_again(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        delay: int,
        exc: BaseException,
        what: str,
    ) -> NoReturn:
        """Send this message again in `delay` s as the same attempt (what it waits for is
        not the work's failure); if even that cannot reach the broker, keep the message
        for redelivery. Always raises."""
        retried = self.signature_from_request(
            self.request, args, kwargs, countdown=delay, retries=self.request.retries
        )
        try:
            retried.apply_async()
        except Exception as send_error:
            log.warning("could not send %s either: kept for redelivery", what)
            raise Reject(send_error, requeue=True) from None
        raise Retry(exc=exc, when=delay, sig=retried)

    # --- the retry policy of the saga's own version -----------------------------------

    def _policy(self) -> RetryPolicy:
        """This work's retry policy in the plan of the running message's saga (the version
        it carries; none: the current plan, as for every other use of the version)."""
        if self.workflow is not None:
            version = (self.request.kwargs or {}).get("version") or self.workflow.version
            if version in self.policies:
                return self.policies[version]
        # The helper task (no workflow of its own): what it was registered with.
        return RetryPolicy(
            max_retries=self.max_retries,
            backoff=int(self.retry_backoff),
            backoff_max=int(self.retry_backoff_max),
            jitter=bool(self.retry_jitter),
        )

    def _within_its_versions_retries(self, wf: Workflow) -> None:
        """A worker lost while running this work counts as a retry (task_retry_on_worker_
        lost), bounded by the task's max_retries: Celery's worker reads it off the task,
        with no saga's version at hand, so it is the most generous version's. A message
        already past its own version's bound fails here, unrun, to the DLQ."""
        allowed = self._policy().max_retries
        if allowed is not None and self.request.retries > allowed:
            raise WorkerLostTooOften(
                f"its worker was lost on {self.request.retries} attempts; version"
                f" {wf.version} of {wf.name} retries {self.work} {allowed} times"
            )

    def retry(
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: Any = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        """Celery's retry, bounded and spaced by the saga's own version's policy. Autoretry
        computes its countdown from the task's attributes, the newest declaration's, and
        passes a stale `max_retries` of an earlier call (Celery keeps it on the task): both
        are replaced, so a saga started on v1 is retried as v1 declared even on v2's build."""
        policy = self._policy()
        if countdown is not None:
            countdown = self._backoff(self.request.retries)
        retried: Retry = super().retry(
            args, kwargs, exc, throw, eta, countdown, policy.max_retries, **options
        )
        return retried

    def _backoff(self, retries: int) -> int:
        """The step's own retry delay (autoretry's formula) after `retries` tries."""
        policy = self._policy()
        delay: int = get_exponential_backoff_interval(
            factor=max(1, int(policy.backoff or 0)),
            retries=retries,
            maximum=int(policy.backoff_max or 0),
            full_jitter=bool(policy.jitter),
        )
        return delay

    @property
    def _outages_seen(self) -> set[str]:
        # Per task instance (one per process): which outages this process met, so that
        # only the first success afterwards pays a Redis write to say it is over.
        seen: set[str] = self.__dict__.setdefault("_seen_outages", set())
        return seen

    def _back_from_outage(self) -> None:
        seen = self._outages_seen
        for dependency in seen:
            self.runner.outages.back(dependency)
        seen.clear()

    # --- a version this worker does not know ----------------------------------------------

    def _unknown_version(
        self,
        unknown: UnknownVersion,
        work: str,
        saga_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        fields: str,
        parked: dict[str, Any] | None = None,
    ) -> NoReturn:
        """Work of a saga whose version this build does not know (a worker of an older
        build, in a rolling deploy, meets a saga started on the new plan; or one that
        dropped a version too early). Its plan is not guessed: the same message is sent
        again after a backoff without spending an attempt, for a worker that knows the
        version to pick up (as _wait_for does for an outage), and after
        UNKNOWN_VERSION_WAIT_SECONDS it is dead-lettered with the reason. Always raises."""
        wait, now = self.sagas.settings.unknown_version_wait_seconds, time.time()
        seen = dict(kwargs.get("unknown_version") or {})
        since = float(seen.get("since") or now)
        dlq_entry = kwargs.get("dlq_entry") or ""
        # A retry the DLQ sent is one attempt of its entry: it is recorded there, not waited.
        if not dlq_entry and now - since < wait:
            tries = int(seen.get("tries") or 0)
            # The step's backoff, but never at once: a jittered 0 s would have a worker
            # that is alone on the queue refuse the same message in a tight loop.
            delay = max(1, self._backoff(tries))
            # Said once per message as a warning; its later refusals only at INFO.
            log.log(
                logging.WARNING if tries == 0 else logging.INFO,
                "refusing %s: version %s of workflow %s is not known here (this worker knows:"
                " %s); sent back to the queue for a worker that knows it, in=%ss, waited"
                " %.0fs of %.0fs",
                fields,
                unknown.version,
                unknown.workflow,
                ", ".join(unknown.known),
                delay,
                now - since,
                wait,
            )
            # Not the work's failure: no attempt spent.
            again = {**kwargs, "unknown_version": {"since": since, "tries": tries + 1}}
            self._send_again(args, again, delay, unknown, f"{fields} back")
        log.error(
            "dead-lettering %s: no worker took version %s of workflow %s within %.0fs",
            fields,
            unknown.version,
            unknown.workflow,
            wait,
        )
        if work and saga_id:
            self.runner.park_unknown_version(
                unknown,
                work,
                saga_id,
                parked if parked is not None else _parked_args_of(args, kwargs),
                dlq_entry,
                self.sagas.settings.dlq_max_attempts,
            )
        # Nothing more is owed by this message: its link_error callback must not run (it
        # would meet the same unknown version), nor anything chained after it.
        raise Ignore()

    def _retry_before_run(self, exc: BaseException, fields: str, wf: Workflow) -> None:
        retryable = isinstance(exc, (*wf.retryable, SoftTimeLimitExceeded))
        if not retryable or self.request.retries >= (self._policy().max_retries or 0):
            return
        log.warning("failed before its work began %s error=%r", fields, error_text(exc))
        try:
            raise self.retry(exc=exc, countdown=self._backoff(self.request.retries))
        except Reject as reject:  # the retry could not be sent: keep the message
            raise Reject(reject.reason, requeue=True) from None

    def _failed(
        self,
        exc: BaseException,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        dlq_entry: str,
        fields: str,
        wf: Workflow,
    ) -> None:
        if wf.kind_of(self.work) == WorkKind.COMPENSATION:
            saga_id = kwargs.get("saga_id") or args[0]
            retry_args = {"saga_id": saga_id, "plan": kwargs.get("plan")}
        else:
            ctx = args[0]
            saga_id, retry_args = wf.saga_id(wf.parse(ctx)), {"saga_id": "", "ctx": ctx}
        self.runner.after_failure(
            wf,
            self.work,
            exc,
            saga_id,
            retry_args,
            dlq_entry,
            fields,
            self.sagas.settings.dlq_max_attempts,
        )


def _parked_args_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """What a retry of refused work needs, read from its message: a step's input context,
    a compensation's plan (whichever the message has)."""
    if "plan" in kwargs:
        return {"plan": kwargs.get("plan") or []}
    return {"ctx": args[0] if args else None}


def _options(
    step_retry: RetryPolicy, defaults: RetryPolicy, retryable: tuple[Any, ...]
) -> dict[str, Any]:
    policy = step_retry.over(defaults)
    return {
        # A step that overran its soft time limit is a timeout: retried like any other.
        "autoretry_for": (*retryable, SoftTimeLimitExceeded),
        # Waited for without spending an attempt (SagaTask._wait_for).
        "dont_autoretry_for": (DependencyUnreachable,),
        "max_retries": policy.max_retries,
        "retry_backoff": policy.backoff,
        "retry_backoff_max": policy.backoff_max,
        "retry_jitter": policy.jitter,
        # Used when a lost worker counts as a retry: Celery's default (180 s) would outlast
        # the broker's visibility timeout and have Redis deliver the message again meanwhile.
        "default_retry_delay": policy.backoff,
        # The settings' limits. A step's own travel with each of its messages (the
        # dispatcher puts its saga's version's there), so that every version is timed by
        # its own declaration on a worker that runs several.
        "soft_time_limit": defaults.soft_time_limit,
        "time_limit": defaults.time_limit,
    }


def _policies(wf: Workflow, name: str, defaults: RetryPolicy) -> dict[str, RetryPolicy]:
    """The retry policy of step or compensation `name` in each version of `wf` that has it."""
    return {
        version: plan.retry_of(name).over(defaults)
        for version, plan in wf.versions.items()
        if plan.knows(name)
    }


def _versioned(
    policies: dict[str, RetryPolicy], step_retry: RetryPolicy, defaults: RetryPolicy, plan: Workflow
) -> dict[str, Any]:
    """A task's options: the newest declaration's, and each version's policy (`policies`).
    Its max_retries is the most generous version's: the bound Celery's worker puts on a
    lost worker's retries, where no saga's version is at hand; each message is then held
    to its own version's (SagaTask._within_its_versions_retries)."""
    options = {**_options(step_retry, defaults, plan.retryable), "policies": policies}
    bounds = [p.max_retries for p in policies.values()]
    if bounds:
        most = None if None in bounds else max(b for b in bounds if b is not None)
        options["max_retries"] = most
    return options


@contextmanager
def _outages_told_apart(service: str) -> Iterator[None]:
    """Inside the task body: an unreachable dependency leaves as DependencyUnreachable,
    which autoretry does not count (dont_autoretry_for); SagaTask waits for it instead."""
    try:
        yield
    except Exception as exc:
        down = unreachable(exc, service)
        if down is None or isinstance(exc, DependencyUnreachable):
            raise
        raise DependencyUnreachable(down, exc) from exc


def _step_task(wf: Workflow, name: str) -> Callable[..., dict[str, Any]]:
    # `outage`: how long this work has waited for an unreachable dependency (SagaTask).
    def run(
        self: SagaTask,
        ctx: dict[str, Any],
        saga_id: str = "",
        dlq_entry: str = "",
        message_id: str = "",
        outage: dict[str, Any] | None = None,
        version: str = "",
        unknown_version: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        plan = wf.plan(version)  # SagaTask refused a version it does not know
        with _outages_told_apart(plan.queue_of(name)):
            return self.runner.run_step(plan, name, ctx, self.request.retries + 1, dlq_entry)

    run.__name__ = name
    run.__doc__ = f"Step {name} of {wf.name}: runs on its service's queue, returns the context."
    return run


def _compensation_task(wf: Workflow, name: str) -> Callable[..., str]:
    def run(
        self: SagaTask,
        saga_id: str,
        plan: list[Any] | None = None,
        dlq_entry: str = "",
        message_id: str = "",
        outage: dict[str, Any] | None = None,
        version: str = "",
        unknown_version: dict[str, Any] | None = None,
    ) -> str:
        attempt = self.request.retries + 1
        own = wf.plan(version)  # SagaTask refused a version it does not know
        with _outages_told_apart(own.queue_of(name)):
            return self.runner.run_compensation(own, name, saga_id, attempt, dlq_entry, plan)

    run.__name__ = name
    run.__doc__ = f"Compensation {name} of {wf.name}: undoes its step once for one saga."
    return run


def _every_step(wf: Workflow) -> list[tuple[Workflow, Any]]:
    """Each step of every version `wf` runs, once by name, as the newest version that has
    it declares it: a step removed in the current plan keeps its task (and its
    compensation's) while an earlier version that has it is known."""
    seen: dict[str, tuple[Workflow, Any]] = {}
    for plan in wf.versions.values():  # the current first
        for step in plan.steps:
            seen.setdefault(step.name, (plan, step))
    return list(seen.values())


def routes(workflows: list[Workflow]) -> dict[str, Any]:
    # The dispatcher names each message's queue from the saga's own plan; these are the
    # default for a task sent without one.
    found: dict[str, Any] = {}
    for wf in workflows:
        for _, step in _every_step(wf):
            found.setdefault(f"{wf.name}.{step.name}", {"queue": step.queue})
            if step.compensation:
                found.setdefault(f"{wf.name}.{step.compensation.name}", {"queue": step.queue})
    return found


def install(
    app: Celery,
    workflows: list[Workflow],
    defaults: RetryPolicy,
    build_runner: Callable[[], Runner],
    settings: AdapterSettings,
    warm_up: Callable[[Runner], None] | None = None,
) -> Sagas:
    """Register every workflow's tasks on `app` (shared=False: each app its own tasks):
    those of each version it knows (Workflow.earlier), each message run by its saga's.
    `warm_up(runner)` runs in each pool child as it starts (open its connections)."""
    app.sagas = Sagas(workflows, build_runner, settings, warm_up)
    app.conf.task_routes = {**(app.conf.task_routes or {}), **routes(workflows)}
    registered: set[str] = set()
    for wf in workflows:
        # Expected business refusals are logged as such, without a traceback.
        errors = [e for plan in wf.versions.values() for e in plan.business_errors]
        throws = (InjectedBusinessError, *dict.fromkeys(errors))
        for plan, step in _every_step(wf):
            if f"{wf.name}.{step.name}" in registered:
                continue
            registered.add(f"{wf.name}.{step.name}")
            # `workflow` is the current declaration, which knows every version: each
            # message is run by its saga's version's plan (SagaTask.__call__).
            app.task(
                _step_task(wf, step.name),
                bind=True,
                shared=False,
                base=SagaTask,
                name=f"{wf.name}.{step.name}",
                workflow=wf,
                work=step.name,
                service=step.queue,
                throws=throws,
                **_versioned(_policies(wf, step.name, defaults), step.retry, defaults, plan),
            )
            if step.compensation and f"{wf.name}.{step.compensation.name}" not in registered:
                registered.add(f"{wf.name}.{step.compensation.name}")
                app.task(
                    _compensation_task(wf, step.compensation.name),
                    bind=True,
                    shared=False,
                    base=SagaTask,
                    name=f"{wf.name}.{step.compensation.name}",
                    workflow=wf,
                    work=step.compensation.name,
                    service=step.queue,
                    throws=throws,
                    **_versioned(
                        _policies(wf, step.compensation.name, defaults), step.retry, defaults, plan
                    ),
                )

    # The link_error callback retries what reaching Redis needs for as long as it takes.
    retryable = tuple({t for wf in workflows for p in wf.versions.values() for t in p.retryable})
    helper = {**_options(RetryPolicy(), defaults, retryable), "max_retries": None}

    # Celery is untyped: its task decorator is Any to mypy.
    @app.task(bind=True, shared=False, base=SagaTask, name=STEP_FAILED, **helper)  # type: ignore[untyped-decorator]
    def step_failed(
        self: SagaTask,
        failure: dict[str, Any],
        saga_id: str = "",
        unknown_version: dict[str, Any] | None = None,
    ) -> str:
        """link_error callback of every step and compensation: route its failure. Takes one
        argument so Celery sends it as a queued task rather than running it inline. The
        failure says the saga's version: it is routed by that version's plan."""
        name, of_saga = failure["name"], failure["saga_id"]
        try:
            wf = self.sagas.plan(failure["workflow"], failure.get("version"))
        except UnknownVersion as unknown:
            fields = f"saga_id={of_saga} step={name} (its failure report)"
            known = self.sagas.workflows[failure["workflow"]].any_plan_with(name)
            parked: dict[str, Any] = (
                {"plan": failure.get("plan") or [name]}
                if known is not None and known.kind_of(name) == WorkKind.COMPENSATION
                else {"ctx": self.runner.events.input(of_saga, name)}
            )
            message = {"saga_id": saga_id, "unknown_version": unknown_version}
            self._unknown_version(unknown, name, of_saga, (failure,), message, fields, parked)
        return self.runner.step_failed(
            wf, failure["name"], failure["saga_id"], failure.get("plan") or []
        )

    # Celery is untyped: its signal's decorator is Any to mypy.
    @worker_process_init.connect(weak=False)  # type: ignore[untyped-decorator]
    def _runtime_of_the_child(**_: Any) -> None:
        # Each pool child its own exporter (OTEL_*): an exporter thread does not survive a fork.
        tracing.configure("worker")
        app.sagas.start_child()

    sagas: Sagas = app.sagas
    return sagas


class CeleryDispatcher:
    """Builds the chains a saga runs as: one signature per piece of work, each on its
    service's queue, each carrying its own link_error callback (errbacks attached to a
    whole chain are lost when chains are composed in several Celery versions).

    chained=False (choreography): only the first piece of work is sent, on its own with
    its callback; each piece announces the next (sagaflow/_choreography.py)."""

    def __init__(self, app: Celery, chained: bool = True) -> None:
        self.app, self.chained = app, chained

    def _send(self, signatures: list[Any]) -> None:
        if self.chained:
            chain(*signatures).apply_async()
        else:
            signatures[0].apply_async()

    def _errback(self, wf: Workflow, saga_id: str, name: str, plan: Iterable[str] = ()) -> Any:
        failure = {
            "workflow": wf.name,
            "version": wf.version,  # the failure is routed by the saga's own plan
            "saga_id": saga_id,
            "name": name,
            "plan": list(plan),
        }
        return self.app.signature(
            STEP_FAILED,
            args=(failure,),
            kwargs={"saga_id": saga_id},  # what Flower's search finds: kwargs:saga_id=...
            immutable=True,
            queue=wf.queue_of(name),
        )

    def forward(
        self,
        wf: Workflow,
        ctx: dict[str, Any],
        steps: list[str],
        dlq_entry: str = "",
        message_id: str = "",
    ) -> None:
        saga_id = wf.saga_id(wf.parse(ctx))
        signatures = []
        for index, name in enumerate(steps):
            # `wf` is the saga's own version's plan: each message says which, so that the
            # worker runs it by that plan (SagaTask), whichever is current where it runs.
            kwargs: dict[str, Any] = {"saga_id": saga_id, "version": wf.version}
            if index == 0 and dlq_entry:
                kwargs["dlq_entry"] = dlq_entry
            if index == 0 and message_id:
                kwargs["message_id"] = message_id
            sig = self.app.signature(
                f"{wf.name}.{name}",
                args=(ctx,) if index == 0 else (),
                kwargs=kwargs,
                queue=wf.queue_of(name),
                # Flower shows this instead of the whole context.
                argsrepr=f"('{saga_id} context',)",
                **wf.retry_of(name).time_limits,
            )
            sig.link_error(self._errback(wf, saga_id, name))
            signatures.append(sig)
        self._send(signatures)

    def compensate(
        self,
        wf: Workflow,
        saga_id: str,
        plan: list[str],
        start: int = 0,
        dlq_entry: str = "",
        message_id: str = "",
    ) -> None:
        signatures = []
        for index, name in enumerate(plan[start:]):
            kwargs = {"saga_id": saga_id, "plan": list(plan), "version": wf.version}
            if index == 0 and dlq_entry:
                kwargs["dlq_entry"] = dlq_entry
            if index == 0 and message_id:
                kwargs["message_id"] = message_id
            sig = self.app.signature(
                f"{wf.name}.{name}",
                kwargs=kwargs,
                immutable=True,
                queue=wf.queue_of(name),
                **wf.retry_of(name).time_limits,
            )
            sig.link_error(self._errback(wf, saga_id, name, plan))
            signatures.append(sig)
        self._send(signatures)
