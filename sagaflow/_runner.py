"""Running one piece of saga work where its service lives, and routing its failure (the
five failure classes). It knows nothing of Celery: a Dispatcher puts work on its queues.

What each piece of work records goes to the event stream (sagaflow/_events.py), never to a
database other than its own service's: the step's business change and its ledger row are
one local transaction, and the events around it cost a Redis round trip each.
"""

from __future__ import annotations

import logging
import socket
import time
import traceback
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

from pydantic import BaseModel

from sagaflow import tracing
from sagaflow._choreography import CHAINED, Announcer
from sagaflow._dependencies import OutageBoard, unreachable
from sagaflow._errors import (
    AlreadyCompensated,
    InjectedBusinessError,
    InputNotKnown,
    NotApplicable,
    UnknownVersion,
    WorkerLostTooOften,
    error_text,
)
from sagaflow._events import Event, EventLog, Phase
from sagaflow._faults import NO_FAULTS, FaultInjector
from sagaflow._outbox import AfterCommit, Held, message_id
from sagaflow._sending import sender
from sagaflow._status import WorkKind
from sagaflow._workflow import Workflow, plan_of, workflow_of
from sagaflow.dlq.store import DeadLetterStore

log = logging.getLogger("sagaflow")
BUSINESS, PARKED = "business", "parked"  # failure markers


class Dispatcher(Protocol):
    def forward(
        self,
        wf: Workflow,
        ctx: dict[str, Any],
        steps: list[str],
        dlq_entry: str = "",
        message_id: str = "",
    ) -> None:
        """Run `steps` in order: the first gets `ctx`, each later one the previous result."""

    def compensate(
        self,
        wf: Workflow,
        saga_id: str,
        plan: list[str],
        start: int = 0,
        dlq_entry: str = "",
        message_id: str = "",
    ) -> None:
        """Run plan[start:] in order (newest first), each on its step's queue."""


class Runner:
    def __init__(
        self,
        workflows: dict[str, Workflow],
        deps: Any,
        events: EventLog,
        dead_letters: DeadLetterStore,
        dispatcher: Dispatcher,
        faults: FaultInjector = NO_FAULTS,
        worker: str | None = None,
        announcer: Announcer = CHAINED,
        outage_budget: float = 1800.0,
    ):
        self.workflows, self.deps = workflows, deps
        self.events, self.dead_letters, self.dispatcher = events, dead_letters, dispatcher
        self.faults = faults
        self.worker = worker or socket.gethostname()
        # Orchestration: the chain carries the next piece of work, nothing is announced.
        # Choreography: each piece announces the next (sagaflow/_choreography.py).
        self.announcer = announcer
        # Sends the outbox rows a piece of work writes once it succeeded (None: the relay
        # does, at its next look).
        self.after_commit: AfterCommit | None = None
        self.outage_budget = outage_budget
        # Outages of the dependencies work needs, seen by any process (dependencies.py).
        self.outages = OutageBoard(events.redis)

    def plan(self, workflow: str, version: str | None) -> Workflow:
        """The plan a saga of `workflow` started on `version` runs by (Workflow.plan)."""
        return plan_of(self.workflows, workflow, version)

    def is_business(self, wf: Workflow, exc: BaseException) -> bool:
        return isinstance(exc, (InjectedBusinessError, *wf.business_errors))

    def event(self, wf: Workflow, saga_id: str, name: str, phase: Phase, **fields: Any) -> Event:
        return Event(saga_id, wf.name, name, phase, worker=self.worker, **fields)

    # --- starting -----------------------------------------------------------------------

    def start(self, wf: Workflow, ctx: dict[str, Any] | BaseModel) -> None:
        """Send the saga's chain (its log row was created with the business record)."""
        self.dispatcher.forward(wf, wf.parse(ctx).model_dump(mode="json"), wf.step_names)

    # --- running one piece of work ---------------------------------------------------

    def run_step(
        self, wf: Workflow, name: str, ctx: dict[str, Any], attempt: int, dlq_entry: str = ""
    ) -> dict[str, Any]:
        """Run forward step `name` once. Business errors are recorded as the step's failure
        and re-raised (its link_error callback turns the saga back); other errors count as
        an attempt and are re-raised for the retry policy."""
        parsed = wf.parse(ctx)
        saga_id = wf.saga_id(parsed)
        started = self.event(wf, saga_id, name, Phase.STARTED, attempt=attempt)
        fence = self.events.emit_and_read_fence(started, new_attempt=True, keep_input=ctx)
        try:
            if fence:
                raise AlreadyCompensated(f"{saga_id} turned back ({fence}): not applying {name}")
            self.faults.before(name, saga_id)
            with self.announcer.step(wf, name, saga_id, ctx) as announcement, self._held() as held:
                result, detail = wf.step(name).action(self.deps, parsed)
        except AlreadyCompensated as exc:
            self.events.emit(self.event(wf, saga_id, name, Phase.REFUSED, detail=str(exc)))
            if dlq_entry:
                self.dead_letters.resolve(dlq_entry, f"refused: {exc}")
            log.warning("late step refused saga_id=%s step=%s", saga_id, name)
            raise
        except Exception as exc:
            if self.is_business(wf, exc):
                text = error_text(exc)
                self.events.emit(self.event(wf, saga_id, name, Phase.FAILED, error=text))
                self.events.mark_failure(saga_id, name, f"{BUSINESS}|{text}")
                log.info("step failed saga_id=%s step=%s error=%r", saga_id, name, str(exc))
            else:
                self.events.emit(
                    self.event(wf, saga_id, name, Phase.RETRYING, error=error_text(exc))
                )
            raise
        self.faults.after(name, saga_id)
        self._send(held)
        out = wf.parse(result).model_dump(mode="json")
        phase = Phase.SKIPPED if detail is None else Phase.SUCCEEDED
        finished = self.event(wf, saga_id, name, phase, detail=detail or "skipped", ctx=out)
        fence, closed = self.events.finish(finished, f"{name} succeeded")
        compensation = wf.step(name).compensation
        if (fence or closed == "given_up") and compensation:
            # It applied while the saga turned back (a race with the failure, or with an
            # operator giving it up): undo it too, and carry nothing forward.
            undo = compensation.name
            log.warning(
                "step applied as the saga turned back; undoing saga_id=%s step=%s", saga_id, name
            )
            self.events.emit(self.event(wf, saga_id, name, Phase.TURNED_BACK, compensations=[undo]))
            self.announcer.withdraw(announcement, f"{saga_id} turned back")
            self.dispatcher.compensate(wf, saga_id, [undo])
            raise AlreadyCompensated(f"{saga_id} turned back while {name} applied")
        log.info("step succeeded saga_id=%s step=%s detail=%r", saga_id, name, detail)
        self.announcer.send(announcement, ctx=out)
        return out

    def run_compensation(
        self,
        wf: Workflow,
        name: str,
        saga_id: str,
        attempt: int,
        dlq_entry: str = "",
        plan: list[str] | None = None,
    ) -> str:
        """Undo one step once. Every error (a business refusal too: an undo must not
        refuse) counts as an attempt and is re-raised for the retry policy. `plan`: the
        whole turn back this is part of (choreography announces the next in it)."""
        self.events.emit_and_read_fence(
            self.event(wf, saga_id, name, Phase.STARTED, attempt=attempt), new_attempt=True
        )
        compensation = wf.undoing(name).compensation
        assert compensation is not None  # undoing() finds only steps with a compensation
        try:
            self.faults.before(name, saga_id)
            with (
                self.announcer.compensation(wf, name, saga_id, plan or [name]) as announcement,
                self._held() as held,
            ):
                outcome = compensation.undo(self.deps, saga_id)
        except Exception as exc:
            self.events.emit(self.event(wf, saga_id, name, Phase.RETRYING, error=error_text(exc)))
            raise
        self.faults.after(name, saga_id)
        self._send(held)
        self.events.finish(
            self.event(wf, saga_id, name, Phase.SUCCEEDED, detail=outcome), f"{name} succeeded"
        )
        log.info("compensation done saga_id=%s step=%s outcome=%r", saga_id, name, outcome)
        self.announcer.send(announcement)
        return outcome

    def _held(self) -> AbstractContextManager[list[Held]]:
        """Collects the outbox rows the work writes (AfterCommit), if this process sends
        its own."""
        none: list[Held] = []
        return self.after_commit.collect() if self.after_commit else nullcontext(none)

    def _send(self, held: list[Held]) -> None:
        # Rows are held only by an after_commit (_held).
        if held and self.after_commit is not None:
            self.after_commit.send(held)

    # --- routing failures -------------------------------------------------------------

    def step_failed(self, wf: Workflow, name: str, saga_id: str, plan: list[str]) -> str:
        """The link_error callback of every step and compensation: what its failure means.
        The task's own handler left a marker saying how it ended."""
        if self.events.succeeded(saga_id, name):
            # The late callback of an attempt that was overtaken (its worker was killed,
            # and a redelivery or a DLQ retry succeeded first): nothing is owed.
            log.info("stale failure report saga_id=%s step=%s: it succeeded", saga_id, name)
            return "already succeeded"
        marker = self.events.failure(saga_id, name) or ""
        how, _, reason = marker.partition("|")
        kind = wf.kind_of(name)
        if how == BUSINESS and kind == WorkKind.STEP:
            self.turn_back(wf, saga_id, name, reason or f"{name} failed")
            return "compensating"  # class 1
        if how == BUSINESS:
            # Class 3: after the pivot the saga already succeeded; retried, never undone.
            self.dead_letter(wf, name, saga_id, self._parked_args(wf, name, saga_id, plan), reason)
            return "dead_lettered"
        if how == PARKED:
            return "nothing to do"  # its own handler parked it
        # It died without reaching its own handling (its worker lost on every retry, a hard
        # time limit): park it rather than guess whether it applied.
        self.dead_letter(
            wf,
            name,
            saga_id,
            self._parked_args(wf, name, saga_id, plan),
            "failed without reaching its own error handling (its worker lost on every retry, or"
            " a hard time limit)",
        )
        return "dead_lettered"

    def park_unknown_version(
        self,
        unknown: UnknownVersion,
        name: str,
        saga_id: str,
        args: dict[str, Any],
        dlq_entry: str = "",
        max_attempts: int = 1,
    ) -> None:
        """Work of a version no worker took in time (sagaflow.celery_app): parked with the
        reason, and the saga's version, so that a process that knows it can send it again.
        Its kind and service in the entry are those of the newest plan this process knows
        that has it (only the saga's own plan could say for sure)."""
        current = self.workflows.get(unknown.workflow)
        like = current.any_plan_with(name) if current is not None else None
        if like is None:
            # Not a step of any plan known here: nothing can be said about it. Its saga's
            # row stays as it is, and the stall check (where the version is known) finds it.
            log.error("cannot park %s of %s: %s", name, saga_id, unknown)
            return
        if dlq_entry:
            self.dlq_attempt_failed(like, name, saga_id, dlq_entry, unknown, max_attempts)
            return
        self.dead_letter(
            like, name, saga_id, {**args, "saga_id": saga_id}, unknown, version=unknown.version
        )

    def after_failure(
        self,
        wf: Workflow,
        name: str,
        exc: BaseException,
        saga_id: str,
        retry_args: dict[str, Any],
        dlq_entry: str = "",
        fields: str = "",
        max_attempts: int = 1,
    ) -> None:
        """A piece of work failed for good (its retries, if any, are used up): route what
        its own handler can; its link_error callback does the rest."""
        kind = wf.kind_of(name)
        business = self.is_business(wf, exc)
        if business and kind == WorkKind.STEP:
            if dlq_entry:
                self.dead_letters.resolve(dlq_entry, "failed with a business error: undoing")
            return  # the callback turns the saga back (class 1)
        if dlq_entry:
            self.dlq_attempt_failed(wf, name, saga_id, dlq_entry, exc, max_attempts)
            return
        if business and kind == WorkKind.AFTER_PIVOT:
            return  # the callback parks it (class 3)
        timeout = type(exc).__name__ == "SoftTimeLimitExceeded"
        exhausted = timeout or isinstance(exc, (WorkerLostTooOften, *wf.retryable))
        why = "retries exhausted" if exhausted else "not retryable"
        if business:
            why = "refused by the business (an undo must not refuse)"
        log.error("dead-lettering %s (%s) error=%r", fields or saga_id, why, str(exc))
        args = {**retry_args, "saga_id": saga_id}
        if kind == WorkKind.COMPENSATION:
            args["plan"] = args.get("plan") or [name]
        else:
            args["then"] = wf.steps_after(name)
        self.dead_letter(wf, name, saga_id, args, exc)

    def dlq_attempt_failed(
        self,
        wf: Workflow,
        name: str,
        saga_id: str,
        eid: str,
        exc: BaseException,
        max_attempts: int,
    ) -> None:
        """A retry sent by the DLQ failed: the entry says so and schedules the next or, once
        they are used up, waits for a human (the DLQ worker then alerts). A retry an
        operator asked for pages nobody: the operator is looking."""
        store = self.dead_letters
        entry = store.get(eid) or {"attempts": 0}
        by_operator = entry.get("by_operator") == "1"
        dependency = unreachable(exc, wf.queue_of(name)) or ""
        if dependency:
            # Not the work's failure: the attempt is given back, within the outage budget
            # counted from when the work was first parked.
            self.outages.record(dependency, exc)
            first = entry.get("first_failed_at") or time.time()
            if time.time() - first < self.outage_budget:
                store.refund_attempt(eid)
                entry["attempts"] = max(0, entry["attempts"] - 1)
        give_up = by_operator or entry["attempts"] >= max_attempts
        store.attempt_failed(
            eid,
            type(exc).__name__,
            error_text(exc),
            give_up,
            alert_after=0,
            alerted=by_operator,
            dependency=dependency,
        )
        if by_operator:
            store.update(eid, by_operator=0)
        self.events.mark_failure(saga_id, name, PARKED)
        self.events.emit(self.event(wf, saga_id, name, Phase.DEAD_LETTERED, error=error_text(exc)))
        log.warning(
            "DLQ retry failed dlq_id=%s attempt=%s give_up=%s error=%r",
            eid,
            entry["attempts"],
            give_up,
            str(exc),
        )

    def _parked_args(
        self, wf: Workflow, name: str, saga_id: str, plan: list[str]
    ) -> dict[str, Any]:
        """What a retry needs: a step's input context (kept in Redis while it is owed) and
        what follows it; a compensation's plan."""
        if wf.kind_of(name) == WorkKind.COMPENSATION:
            return {"saga_id": saga_id, "plan": plan or [name]}
        return {
            "saga_id": saga_id,
            "ctx": self.events.input(saga_id, name),
            "then": wf.steps_after(name),
        }

    def turn_back(self, wf: Workflow, saga_id: str, failed_step: str, reason: str) -> list[str]:
        """Fence the saga and undo, newest first, every step up to the failed one (whose
        own undo voids it). Only the first caller dispatches: a repeat changes nothing."""
        compensations = wf.compensations_for(failed_step)
        event = self.event(
            wf, saga_id, failed_step, Phase.TURNED_BACK, detail=reason, compensations=compensations
        )
        if not self.events.turn_back(event, reason):
            return []
        log.info(
            "compensating saga_id=%s failed_step=%s compensations=%s%s",
            saga_id,
            failed_step,
            compensations,
            f" event={wf.step(failed_step).failure_event}" if self.announcer.announces else "",
        )
        if compensations:
            self.dispatcher.compensate(wf, saga_id, compensations)
        return compensations

    def dead_letter(
        self,
        wf: Workflow,
        name: str,
        saga_id: str,
        args: dict[str, Any],
        error: BaseException | str,
        task: str = "",
        version: str = "",
    ) -> dict[str, Any] | None:
        """Retries ran out (classes 2, 3, 4): park the work in the DLQ. None when it has
        succeeded meanwhile (the report was stale): nothing is parked. The entry records
        the saga's version (`wf`'s, unless `version` says another): its retry runs by it."""
        trace = (
            "".join(traceback.format_exception(error))[-4000:]
            if isinstance(error, BaseException)
            else ""
        )
        entry = self.dead_letters.push(
            saga_id=saga_id,
            workflow=wf.name,
            name=name,
            kind=wf.kind_of(name),
            task=task or f"{wf.name}.{name}",
            args=args,
            error_class=type(error).__name__ if isinstance(error, BaseException) else "Error",
            error=error_text(error),
            traceback=trace,
            dependency=(
                unreachable(error, wf.queue_of(name)) or ""
                if isinstance(error, BaseException)
                else ""
            ),
            traceparent=tracing.traceparent(),
            version=version or wf.version,
        )
        if entry is None:
            log.info("not parking %s of %s: it has succeeded meanwhile", name, saga_id)
            return None
        tracing.note(outcome="dead_lettered", **{"dlq.entry": entry["id"]})
        # Redis first: if the push fails, nothing claims the work is parked, and the task
        # (or callback) that saw the failure tries again.
        self.events.mark_failure(saga_id, name, PARKED)
        self.events.emit(
            self.event(wf, saga_id, name, Phase.DEAD_LETTERED, error=error_text(error))
        )
        log.error(
            "dead-lettered saga_id=%s step=%s kind=%s error=%r dlq_id=%s",
            saga_id,
            name,
            wf.kind_of(name),
            error_text(error),
            entry["id"],
        )
        return entry

    # --- after the DLQ or an operator ------------------------------------------------

    def redispatch(self, entry: dict[str, Any], by: str = "") -> str:
        """Send parked work to its service's queue once more; what follows it is sent on
        from there when it succeeds. The entry is closed (or its failure recorded) by the
        work itself. `by`: the operator who asked (else the DLQ worker's own retry). In the
        trace of the work that failed."""
        with tracing.continued(
            entry.get("traceparent"),
            "dlq.requeue" if by else "dlq.retry",
            id=entry["saga_id"],
            workflow=entry.get("workflow"),
            step=entry["name"],
            operator=by,
            **{"dlq.entry": entry["id"], "dlq.attempt": entry.get("attempts")},
        ):
            return self._redispatch(entry)

    def _redispatch(self, entry: dict[str, Any]) -> str:
        name, args, eid = entry["name"], entry["args"], entry["id"]
        if "outbox" in args:
            # A message its relay could not send: sending it is all there is to do.
            message = args["outbox"]
            sender(self)(message["kind"], message["payload"], message["message_id"])
            self.dead_letters.resolve(eid, "sent by the DLQ")
            return f"sent {message['message_id']}"
        # By the plan of the version the saga started on (an entry parked before versions
        # were recorded: the current plan). One this process does not know: UnknownVersion,
        # a NotApplicable: the DLQ asks a human, an operator's requeue says why.
        wf = self.plan(entry["workflow"], entry.get("version"))
        if wf.kind_of(name) == WorkKind.COMPENSATION:
            plan = args.get("plan") or [name]
            self.dispatcher.compensate(wf, entry["saga_id"], plan, plan.index(name), eid)
            return f"sent {name}, then {plan[plan.index(name) + 1 :] or 'nothing more'}"
        ctx = args.get("ctx")
        if ctx is None:
            # Parked by a callback after its kept input was lost: the orchestrator copies
            # it from the saga log (Projector), normally within a second.
            raise InputNotKnown(f"{eid}: the step's input is not known yet; it cannot be sent")
        steps = [name, *wf.steps_after(name)]
        self.dispatcher.forward(wf, ctx, steps, eid)
        return f"sent {name}, then {steps[1:] or 'nothing more'}"

    def park_message(self, service: str, row: tuple[Any, ...], error: str) -> dict[str, Any] | None:
        """An outbox message its relay gave up on (class 3): the DLQ sends it from there."""
        row_id, key, kind, payload, _attempts = row
        mid = message_id(service, row_id)
        owner = workflow_of(self.workflows, key)
        workflow = payload.get("workflow") or (owner.name if owner else "")
        entry = self.dead_letters.push(
            saga_id=key,
            workflow=workflow,
            name=f"outbox:{service}:{row_id}",
            kind=WorkKind.AFTER_PIVOT,
            task=f"outbox.{kind}",
            args={"saga_id": key, "outbox": {"kind": kind, "payload": payload, "message_id": mid}},
            error_class="OutboxSendFailed",
            error=error,
            traceback="",
            traceparent=(payload.get(tracing.TRACE_KEY) or {}).get(tracing.TRACEPARENT, ""),
        )
        log.error("parked an outbox message %s of %s: %s", mid, key, error)
        return entry

    def give_up(self, entry: dict[str, Any], who: str) -> list[str]:
        """An operator stops retrying a stuck forward step and undoes the saga instead."""
        wf = self.plan(entry["workflow"], entry.get("version"))
        if wf.kind_of(entry["name"]) != WorkKind.STEP:
            raise NotApplicable(f"{entry['id']} is not a forward step before the pivot")
        if not self.dead_letters.give_up(entry["id"], f"given up by {who}: compensating"):
            raise NotApplicable(f"{entry['id']} is already resolved (it may have succeeded)")
        return self.turn_back(
            wf, entry["saga_id"], entry["name"], f"{entry['name']} abandoned by {who}"
        )
