"""The saga's rules: run one step or compensation with its bookkeeping, and route each
failure to its handling (failure classes in DESIGN.md section 3).

It knows nothing of Celery: a Dispatcher puts the next pieces of work on their queues.
"""

from __future__ import annotations

import logging
import traceback
from typing import Protocol

from app.errors import AlreadyCompensated, BusinessError
from app.saga import definition as saga
from app.saga import log as saga_log
from app.saga.steps import COMPENSATE, FORWARD
from app.services.orders import COMPENSATING, FAILED

log = logging.getLogger("saga")
TURNED_BACK = (COMPENSATING, FAILED)  # order statuses in which no forward step may apply


class Dispatcher(Protocol):
    def forward(self, ctx: dict, steps: list[str]) -> None: ...
    def compensate(self, order_id: int, compensations: list[str]) -> None: ...


class Saga:
    def __init__(self, rt, dispatcher: Dispatcher):
        self.rt = rt
        self.log = rt.saga_log
        self.dispatcher = dispatcher

    # --- starting ---------------------------------------------------------------------

    @staticmethod
    def plan() -> list[tuple[str, str]]:
        return [(step.name, "step") for step in saga.SAGA]

    def start(self, order_id: int) -> None:
        self.dispatcher.forward({"order_id": order_id}, list(saga.STEP_NAMES))

    # --- running one piece of work ----------------------------------------------------

    def run_step(self, name: str, ctx: dict) -> dict:
        """Run forward step `name` once, recording it in the saga log. Business errors are
        recorded as the step's failure and re-raised; other errors count as an attempt."""
        order_id = ctx["order_id"]
        last_error, order_status = self.log.started(order_id, name, "step")
        failed_before = last_error is not None
        try:
            if order_status in TURNED_BACK:
                # A late or duplicate message: the saga is being undone, so nothing more
                # may be done forward (the ledger refuses what was compensated; this also
                # covers the step that failed, which has nothing to refuse with).
                raise AlreadyCompensated(f"order {order_id} is {order_status}: not applying {name}")
            self.rt.faults.before(name, order_id)
            result, detail = FORWARD[name](self.rt, ctx)
        except BusinessError as exc:
            self.log.failed(order_id, name, exc)
            log.info("step failed order_id=%s step=%s error=%r", order_id, name, str(exc))
            raise
        except AlreadyCompensated as exc:
            self.log.refused(order_id, name, str(exc))
            log.warning("late step refused order_id=%s step=%s", order_id, name)
            raise
        except Exception as exc:
            self.log.attempt_failed(order_id, name, exc)
            raise
        self.rt.faults.after(name, order_id)
        payment = (result["paid"], "PAID") if name == "use_balance" else None
        order_status = self.log.succeeded(
            order_id,
            name,
            detail or "skipped: no coupon",
            skipped=detail is None,
            completes_order=name == saga.PIVOT,
            payment=payment,
            was_stuck=failed_before,
        )
        if failed_before:  # only work that failed before can have a DLQ entry to close
            self.rt.dead_letters.resolve_work(order_id, name, "step succeeded")
        if order_status in TURNED_BACK and saga.BY_NAME[name].compensation:
            # It applied while the saga turned back (a race with the failure): undo it too,
            # and stop here rather than carry the chain forward.
            log.warning(
                "step applied after compensation began; undoing it order_id=%s step=%s",
                order_id,
                name,
            )
            compensation = saga.BY_NAME[name].compensation
            self.log.owe_compensation(order_id, compensation)
            self.dispatcher.compensate(order_id, [compensation])
            raise AlreadyCompensated(f"order {order_id} turned back while {name} applied")
        log.info("step succeeded order_id=%s step=%s detail=%r", order_id, name, detail)
        return result

    def run_compensation(self, name: str, order_id: int) -> str:
        failed_before = self.log.started(order_id, name, "compensation")[0] is not None
        try:
            self.rt.faults.before(name, order_id)
            outcome = COMPENSATE[name](self.rt, order_id)
        except Exception as exc:
            self.log.attempt_failed(order_id, name, exc)
            raise
        self.rt.faults.after(name, order_id)
        payment = (0, "REFUNDED") if name == "refund_balance" and outcome == "undone" else None
        self.log.succeeded(order_id, name, outcome, payment=payment, was_stuck=failed_before)
        if failed_before:
            self.rt.dead_letters.resolve_work(order_id, name, "compensation succeeded")
        log.info("compensation done order_id=%s step=%s outcome=%r", order_id, name, outcome)
        return outcome

    # --- routing failures -------------------------------------------------------------

    def step_failed(self, order_id: int, name: str) -> str:
        """The link_error callback of every step and compensation: decide what its
        failure means."""
        step = self.log.step(order_id, name) or {"status": None}
        if step["status"] == saga_log.FAILED_STEP and saga.kind_of(name) == "step":
            self.start_compensation(order_id, name, step["error"], include_failed=False)
            return "compensating"  # class 1
        if step["status"] == saga_log.FAILED_STEP:
            # Class 3: the order already succeeded; publishing is retried, never undone.
            self.dead_letter(order_id, name, self.rt.orders.context(order_id), step["error"])
            return "dead_lettered"
        if step["status"] in (saga_log.RUNNING, saga_log.RETRYING, saga_log.PENDING_STEP, None):
            # Failed without reaching its own handler (a hard time limit): park it like an
            # exhausted retry rather than guess.
            self.dead_letter(
                order_id,
                name,
                {"order_id": order_id},
                "failed without reaching its own error handling (hard time limit?)",
            )
            return "dead_lettered"
        return "nothing to do"  # dead-lettered, refused or already done

    def start_compensation(
        self, order_id: int, failed_step: str, reason: str | None, include_failed: bool
    ) -> list[str]:
        """Undo, newest first, every step that applied. With include_failed, also void the
        failed step itself (it may or may not have run)."""
        compensations = self.log.begin_compensation(
            order_id, failed_step, reason or f"{failed_step} failed", include_failed
        )
        log.info(
            "compensating order_id=%s failed_step=%s compensations=%s",
            order_id,
            failed_step,
            compensations,
        )
        if compensations:
            self.dispatcher.compensate(order_id, compensations)
        return compensations

    def dead_letter(
        self,
        order_id: int,
        name: str,
        args: dict,
        error: BaseException | str,
        task: str | None = None,
    ) -> dict:
        """Retries ran out (classes 2, 3, 4): park the work in the DLQ."""
        kind = saga.kind_of(name)
        trace = (
            "".join(traceback.format_exception(error))[-4000:]
            if isinstance(error, BaseException)
            else ""
        )
        entry = self.rt.dead_letters.push(
            order_id=order_id,
            name=name,
            kind=kind,
            task=task or f"saga.{name}",
            args=args,
            error_class=type(error).__name__ if isinstance(error, BaseException) else "Error",
            error=saga_log.error_text(error),
            traceback=trace,
        )
        # Redis first: if the push fails, the log does not claim the work is parked, and the
        # callback that sees the failure tries again.
        self.log.dead_lettered(order_id, name, error, keep_order_status=kind == "publish")
        log.error(
            "dead-lettered order_id=%s step=%s kind=%s error=%r dlq_id=%s",
            order_id,
            name,
            kind,
            saga_log.error_text(error),
            entry["id"],
        )
        return entry

    # --- after the DLQ or an operator ------------------------------------------------

    def retry(self, order_id: int, name: str) -> str:
        """Run parked work once, here, then let the saga continue on the queues. Raises
        what the work raises, except a business error, which starts compensation."""
        try:
            return self._retry(order_id, name)
        except Exception as exc:
            # Still failing: the work stays parked, and the log says so again.
            self.log.dead_lettered(
                order_id, name, exc, keep_order_status=saga.kind_of(name) == "publish"
            )
            raise

    def _retry(self, order_id: int, name: str) -> str:
        if name in saga.BY_COMPENSATION:
            self.run_compensation(name, order_id)
            remaining = [c for c in self.log.owed_compensations(order_id) if c != name]
            if remaining:
                self.dispatcher.compensate(order_id, remaining)
            return f"{name} succeeded; remaining compensations: {remaining or 'none'}"
        ctx = self.rt.orders.context(order_id) if name != "create_order" else {"order_id": order_id}
        try:
            ctx = self.run_step(name, ctx)
        except AlreadyCompensated:
            return f"{name} was already compensated: nothing to retry"
        except BusinessError as exc:
            if saga.kind_of(name) == "publish":
                raise

            self.start_compensation(order_id, name, str(exc), include_failed=False)
            return f"{name} failed with a business error; compensating: {exc}"
        rest = [s.name for s in saga.steps_after(name)]
        if rest:
            self.dispatcher.forward(ctx, rest)
        return f"{name} succeeded; saga continues with {rest or 'nothing'}"

    def park_stalled(self, idle_seconds: float) -> list[dict]:
        """Hand every saga that stopped moving to the DLQ, which retries it from there. A
        step that failed but whose failure was never routed (its link_error message was
        lost) is routed now: compensated (class 1) or parked (class 3)."""
        parked = []
        for order_id, name, status in self.log.stalled(idle_seconds):
            if status == saga_log.FAILED_STEP:
                log.warning(
                    "routing a failure whose callback was lost order_id=%s step=%s", order_id, name
                )
                self.step_failed(order_id, name)
                continue
            args = {"order_id": order_id}
            error = f"stalled: no progress for {idle_seconds:.0f}s (was its message lost?)"
            parked.append(self.dead_letter(order_id, name, args, error))
        return parked

    def give_up(self, order_id: int, name: str) -> list[str]:
        """Stop retrying a stuck forward step and compensate instead (operator's call)."""
        compensations = self.start_compensation(
            order_id, name, f"{name} abandoned by an operator", include_failed=True
        )
        self.rt.dead_letters.resolve_work(order_id, name, "given up: compensating instead")
        return compensations
