"""What an operator can do to parked work, for the CLI and the console alike: read the plan
(the dry run), send it again, give it up and undo the saga, resolve it by hand; and to a
saga still moving: cancel it. Every action is recorded (who, when, what, and how it went)
in the saga log's database, and shown with the saga."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from sagaflow import tracing
from sagaflow._errors import NotApplicable
from sagaflow._log import OperatorAction, SagaLog
from sagaflow._status import DONE, WorkKind
from sagaflow.dlq.store import DUE, RESOLVED, RETRYING, DeadLetterStore

if TYPE_CHECKING:
    from sagaflow._runner import Runner


class Refused(NotApplicable):
    """The action does not apply to this entry (exit 1, a 409 in the console)."""

    code = "refused"


# A compensation's row in these states has not started: the saga is not turning back yet.
PENDING_WORK = (None, "pending", "not_run")

# What `requeue` did with one entry (its result's "result").
SENT, FAILED, SKIPPED = "sent", "failed", "skipped"


def _iso(moment: datetime) -> str:
    return moment.replace(tzinfo=moment.tzinfo or UTC).isoformat()


class OperatorActions:
    def __init__(
        self, store: DeadLetterStore, runner: Runner, saga_log: SagaLog, lease_seconds: float
    ) -> None:
        self.store, self.runner, self.saga_log = store, runner, saga_log
        self.lease = lease_seconds

    # --- reading ---------------------------------------------------------------------------

    def plan(self, entry: dict[str, Any]) -> dict[str, Any]:
        """What `requeue` would do, without doing it."""
        if "outbox" in entry["args"]:
            message = entry["args"]["outbox"]
            return {
                "id": entry["id"],
                "cannot_send": None,
                "runs_again": f"sending {message['message_id']} ({message['kind']})",
                "on_queue": "the broker",
                "then": [],
                "idempotent": True,
                "already_compensated": [],
                "can_compensate": False,
                "note": "consumers drop a message whose id they already had",
            }
        wf = self.runner.plan(entry["workflow"], entry.get("version"))  # the saga's own plan
        name = entry["name"]
        if wf.kind_of(name) == WorkKind.COMPENSATION:
            owed = entry["args"].get("plan") or [name]
            then = owed[owed.index(name) + 1 :] if name in owed else []
        else:
            then = wf.steps_after(name)
        # Runner.redispatch refuses a forward step without its input: say so in advance.
        unknown = wf.kind_of(name) != WorkKind.COMPENSATION and entry["args"].get("ctx") is None
        statuses = self.saga_log.statuses(entry["saga_id"])
        compensated = [n for n in wf.compensation_names if statuses.get(n) == "succeeded"]
        return {
            "id": entry["id"],
            "cannot_send": "the step's input is not known yet" if unknown else None,
            "runs_again": name,
            "on_queue": wf.queue_of(name),
            "then": then,
            "idempotent": True,
            "already_compensated": compensated,
            "can_compensate": entry["kind"] == WorkKind.STEP and entry["status"] != RESOLVED,
            "note": "every step and compensation is keyed by (saga, step): a repeat changes "
            "nothing, and a step whose compensation already ran refuses",
        }

    def history(self, saga_id: str) -> list[dict[str, Any]]:
        with self.saga_log.db.read() as session:
            rows = session.scalars(
                select(OperatorAction)
                .where(OperatorAction.saga_id == saga_id)
                .order_by(OperatorAction.id)
            )
            return [
                {
                    "at": _iso(r.at),
                    "actor": r.actor,
                    "action": r.action,
                    "entry_id": r.entry_id,
                    "note": r.note,
                    "outcome": r.outcome,
                }
                for r in rows
            ]

    # --- acting ---------------------------------------------------------------------------

    def requeue(self, entry: dict[str, Any], who: str, wait: float) -> dict[str, Any]:
        """Send the work back to its queue and wait (up to `wait` s) for it to report.

        Returns {"id", "result", "ok", "outcome"}: result SENT (it succeeded) or FAILED (it
        could not be sent, and the entry is left as it was; it failed again; or it did not
        answer in time); `outcome` says what happened in words."""
        if entry["status"] == RESOLVED:
            # Re-running closed work could re-apply a step that was given up and undone.
            raise Refused(f"{entry['id']} is already resolved ({entry.get('note')})")
        eid = entry["id"]
        before = entry.get("last_failed_at")
        due = self.store.redis.zscore(DUE, eid)
        # Marked before the send: the work may report back before redispatch returns.
        self.store.start_attempt(eid)
        # An operator is already looking: if it fails again, no page (the work says so).
        self.store.update(eid, status=RETRYING, by_operator=1)
        self.store.schedule(eid, time.time() + max(wait, self.lease))
        try:
            sent = self.runner.redispatch(entry, by=who)
        except ValueError as exc:  # the runner's way of saying it cannot be sent
            self._leave_as_it_was(entry, due)
            reason = str(exc).removeprefix(f"{eid}: ")
            result = {"id": eid, "result": FAILED, "ok": False, "outcome": reason}
            self.record(entry, who, "requeue", "", f"not sent: {reason}")
            return result
        result = {"id": eid, "result": FAILED, "ok": False, "outcome": ""}
        deadline = time.monotonic() + wait
        while True:
            now = self.store.get(eid)
            assert now is not None, f"{eid} was purged while it was requeued"
            if now["status"] == RESOLVED:
                result.update(result=SENT, ok=True, outcome=f"{sent}; {now.get('note')}")
                break
            if now.get("last_failed_at") != before:
                result.update(outcome=f"it failed again: {now['error']} ({sent})")
                break
            if time.monotonic() >= deadline:
                result.update(outcome=f"no answer within {wait:.0f}s ({sent}; it may still finish)")
                break
            time.sleep(0.2)
        self.record(entry, who, "requeue", "", result["outcome"])
        return result

    def _leave_as_it_was(self, entry: dict[str, Any], due: float | None) -> None:
        """Undo what requeue marked before a send that did not happen: the DLQ worker goes
        on with the entry as if the operator had not touched it."""
        eid = entry["id"]
        self.store.update(
            eid,
            status=entry["status"],
            attempts=entry["attempts"],
            by_operator=entry.get("by_operator") or 0,
        )
        if due is None:
            self.store.unschedule(eid)
        else:
            self.store.schedule(eid, due)

    def compensate(self, entry: dict[str, Any], who: str, force: bool = False) -> list[str]:
        if entry["kind"] != WorkKind.STEP:
            raise Refused(
                f"{entry['id']} is a {entry['kind']}: only a stuck forward step can be given "
                "up (a compensation or a step after the pivot can only be requeued or resolved)"
            )
        if entry["status"] == RESOLVED:
            raise Refused(f"{entry['id']} is already resolved ({entry.get('note')})")
        if entry["status"] == RETRYING and not force:
            raise Refused(
                f"{entry['id']} is still being retried by the DLQ worker (attempt "
                f"{entry['attempts']}); wait until it needs a human, or force it"
            )
        with tracing.continued(
            entry.get("traceparent"),
            "dlq.compensate",
            id=entry["saga_id"],
            step=entry["name"],
            operator=who,
            **{"dlq.entry": entry["id"]},
        ):
            launched = self.runner.give_up(entry, who)
        self.record(
            entry, who, "compensate", "", f"compensating: {', '.join(launched) or 'nothing'}"
        )
        return launched

    # --- cancelling a saga in flight -----------------------------------------------------

    def cancel_plan(self, saga_id: str) -> dict[str, Any]:
        """What `cancel` would do: where the saga turns back (the first step before the
        pivot that has not succeeded: the one running, or the next to run) and what it
        undoes, newest first. Refused once the saga completed or began turning back."""
        timeline = self.saga_log.timeline(saga_id)
        if timeline is None:
            raise Refused(f"no saga {saga_id}")
        wf = self.runner.plan(timeline["workflow"], timeline.get("version"))  # the saga's own
        statuses = {s["name"]: s["status"] for s in timeline["steps"]}
        if timeline["status"] == "COMPLETED":
            raise Refused(
                f"{saga_id} is COMPLETED: its pivot applied, so it cannot be cancelled; undo"
                " it with a workflow of its own (the shop: a refund of the order)"
            )
        undoing = [n for n in wf.compensation_names if statuses.get(n) not in PENDING_WORK]
        if timeline["status"] in ("COMPENSATING", "FAILED") or undoing:
            raise Refused(f"{saga_id} is already turning back ({timeline['status']})")
        before_pivot = [s.name for s in wf.steps if s.compensation]
        boundary = next((n for n in before_pivot if statuses.get(n) not in DONE), None)
        if boundary is None:
            raise Refused(f"{saga_id} has applied its pivot: it is completing, not cancellable")
        parked = [
            e["id"]
            for e in self.store.entries(saga_id=saga_id)
            if e["name"] == boundary and e["status"] != RESOLVED
        ]
        return {
            "saga_id": saga_id,
            "workflow": wf.name,
            "version": wf.version,
            "status": timeline["status"],
            "turns_back_at": boundary,
            "its_status": statuses.get(boundary, "pending"),
            "compensations": wf.compensations_for(boundary),
            "gives_up": parked,
            "note": f"{boundary} is fenced: if it is running it finishes and is undone, or"
            " it is voided and refuses to apply; nothing after it runs",
        }

    def cancel(self, saga_id: str, who: str, note: str) -> dict[str, Any]:
        """Turn the saga back at its next step boundary and undo what applied."""
        if not note.strip():
            raise Refused("say why the saga is cancelled (a note)")
        plan = self.cancel_plan(saga_id)
        wf = self.runner.plan(plan["workflow"], plan["version"])
        for eid in plan["gives_up"]:  # the boundary step is parked: it is given up too
            self.store.give_up(eid, f"cancelled by {who}: compensating")
        # In the saga's trace: its compensations read as the cancel's children.
        traced = (self.saga_log.timeline(saga_id) or {}).get("traceparent")
        with tracing.continued(traced, "saga.cancel", id=saga_id, workflow=wf.name, operator=who):
            launched = self.runner.turn_back(
                wf, saga_id, plan["turns_back_at"], f"cancelled by {who}: {note.strip()}"
            )
        if not launched:
            raise Refused(f"{saga_id} is already turning back")
        entry = {"saga_id": saga_id, "id": f"{saga_id}:{plan['turns_back_at']}"}
        self.record(entry, who, "cancel", note, f"compensating: {', '.join(launched)}")
        return {**plan, "compensations": launched}

    def resolve(self, entry: dict[str, Any], who: str, note: str) -> None:
        if not note.strip():
            raise Refused("say what was done by hand (a note)")
        self.store.resolve(entry["id"], f"resolved by hand by {who}: {note}")
        self.record(entry, who, "resolve", note, "closed the entry")

    def record(self, entry: dict[str, Any], who: str, action: str, note: str, outcome: str) -> None:
        with self.saga_log.db.write() as session:
            session.add(
                OperatorAction(
                    saga_id=entry["saga_id"],
                    entry_id=entry["id"],
                    actor=who,
                    action=action,
                    note=note[:2000],
                    outcome=outcome[:2000],
                    at=datetime.now(UTC),
                )
            )
