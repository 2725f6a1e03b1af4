"""The saga log: one row per step and compensation of an order, in the orders database.

It is the one truth that GET /orders/<id>, the DLQ, alerts and restarts all read.
Order status changes are written in the same transaction as the step row that causes them.
"""

from __future__ import annotations

from datetime import UTC

from sqlalchemy import and_, case, func, or_, select, update

from app.db import Database
from app.ledger import utcnow
from app.saga import definition as saga
from app.services.orders import (
    COMPENSATING,
    COMPLETED,
    FAILED,
    NEEDS_ATTENTION,
    PENDING,
    Order,
    OrderPaymentService,
    SagaStep,
)

RUNNING, RETRYING, SUCCEEDED, SKIPPED = "running", "retrying", "succeeded", "skipped"
FAILED_STEP, DEAD_LETTERED, REFUSED, PENDING_STEP = "failed", "dead_lettered", "refused", "pending"
NOT_RUN = "not_run"  # a forward step the saga turned back before reaching
DONE = (SUCCEEDED, SKIPPED)
# Work in these states still owes something: running it, its retry, or (failed) the
# routing of its failure by the step_failed callback.
OWED = (PENDING_STEP, RUNNING, RETRYING, FAILED_STEP)
COMPENSATION_POSITION = 100  # compensations sort after the forward steps


def _epoch(moment) -> float:
    # SQLite hands back naive datetimes; every time we store is UTC.
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def error_text(exc: BaseException | str) -> str:
    if isinstance(exc, str):
        return exc
    # Some exceptions carry no message (SoftTimeLimitExceeded()): say what they mean.
    name, message = type(exc).__name__, str(exc)
    if message in ("", f"{name}()"):
        first_sentence = " ".join((type(exc).__doc__ or "").split()).split(". ")[0]
        message = first_sentence.rstrip(".") + "." if first_sentence else "no message"
    return f"{name}: {message}"[:2000]


class SagaLog:
    def __init__(self, db: Database):
        self.db = db

    def _row(self, session, order_id: int, name: str, kind: str = "step") -> SagaStep:
        row = session.get(SagaStep, (order_id, name), with_for_update=True)
        if row is None:
            row = SagaStep(
                order_id=order_id,
                name=name,
                kind=kind,
                status=PENDING_STEP,
                attempts=0,
                position=COMPENSATION_POSITION,
            )
            session.add(row)
        return row

    def started(self, order_id: int, name: str, kind: str) -> tuple[str | None, str]:
        """Count an attempt and show the work as running. Returns the last error the work
        had (None on a clean first run: no DLQ entry can exist) and the order's status."""
        # One UPDATE on the hot path: this runs before every step and compensation. A
        # repeat of work that already succeeded keeps its status: compensation decisions
        # read it.
        bump = (
            update(SagaStep)
            .where(SagaStep.order_id == order_id, SagaStep.name == name)
            .values(
                status=case((SagaStep.status.in_(DONE), SagaStep.status), else_=RUNNING),
                attempts=SagaStep.attempts + 1,
                started_at=func.coalesce(SagaStep.started_at, utcnow()),
            )
            .returning(
                SagaStep.error,
                select(Order.status).where(Order.id == order_id).scalar_subquery(),
            )
        )
        with self.db.write() as session:
            found = session.execute(bump).first()
            if found is not None:
                return found[0], found[1]
            row = self._row(session, order_id, name, kind)  # not planned: record it now
            row.status, row.attempts, row.started_at = RUNNING, 1, utcnow()
            return None, session.scalar(select(Order.status).where(Order.id == order_id))

    def attempt_failed(self, order_id: int, name: str, error: BaseException | str) -> None:
        with self.db.write() as session:
            row = self._row(session, order_id, name)
            row.status, row.error = RETRYING, error_text(error)

    def succeeded(
        self,
        order_id: int,
        name: str,
        detail: str,
        *,
        skipped: bool = False,
        completes_order: bool = False,
        payment: tuple[int, str] | None = None,
        was_stuck: bool = True,
    ) -> str:
        """Record success, with what it changes for the order, in one transaction. Pass
        was_stuck=False when the work never failed before: the order then cannot be
        NEEDS_ATTENTION on its account, and the check is skipped (the hot path)."""
        now = utcnow()
        with self.db.write() as session:
            status = session.scalar(
                select(Order.status).where(Order.id == order_id).with_for_update()
            )
            session.execute(
                update(SagaStep)
                .where(SagaStep.order_id == order_id, SagaStep.name == name)
                .values(
                    status=SKIPPED if skipped else SUCCEEDED,
                    detail=detail,
                    error=None,
                    finished_at=now,
                )
            )
            if payment is not None:
                OrderPaymentService.record(session, order_id, *payment)
            if completes_order and status in (PENDING, NEEDS_ATTENTION):
                session.execute(
                    update(Order)
                    .where(Order.id == order_id)
                    .values(status=COMPLETED, failed_step=None, failure_reason=None, updated_at=now)
                )
                return COMPLETED
            if (
                was_stuck
                and status == NEEDS_ATTENTION
                and not self._anything_stuck(session, order_id)
            ):
                # A stuck step was retried successfully: the saga is moving again.
                kind = session.get(SagaStep, (order_id, name)).kind
                status = COMPENSATING if kind == "compensation" else PENDING
                session.execute(
                    update(Order).where(Order.id == order_id).values(status=status, updated_at=now)
                )
            return status

    def _anything_stuck(self, session, order_id: int) -> bool:
        return (
            session.scalar(
                select(SagaStep.name)
                .where(SagaStep.order_id == order_id, SagaStep.status == DEAD_LETTERED)
                .limit(1)
            )
            is not None
        )

    def failed(self, order_id: int, name: str, error: BaseException | str) -> None:
        """A business error: the step did not apply and will not be retried."""
        with self.db.write() as session:
            row = self._row(session, order_id, name)
            row.status, row.error, row.finished_at = FAILED_STEP, error_text(error), utcnow()

    def refused(self, order_id: int, name: str, reason: str) -> None:
        """A late or duplicate delivery that must not apply; what already happened stays."""
        with self.db.write() as session:
            row = self._row(session, order_id, name)
            if row.status not in DONE:
                row.status, row.detail, row.finished_at = REFUSED, reason, utcnow()

    def dead_lettered(
        self, order_id: int, name: str, error: BaseException | str, keep_order_status: bool
    ) -> None:
        """Retries ran out: the work is parked in the DLQ and a human may be needed."""
        with self.db.write() as session:
            row = self._row(session, order_id, name)
            row.status, row.error, row.finished_at = DEAD_LETTERED, error_text(error), utcnow()
            order = session.get(Order, order_id, with_for_update=True)
            if not keep_order_status and order.status != FAILED:
                order.status, order.updated_at = NEEDS_ATTENTION, utcnow()
                order.failed_step = order.failed_step or name
                order.failure_reason = order.failure_reason or f"{name} is stuck: {row.error}"

    def begin_compensation(
        self, order_id: int, failed_step: str, reason: str, include_failed: bool
    ) -> list[str]:
        """Turn the saga back: record why, and which compensations it is owed, newest first:
        every step that applied before `failed_step` (and, with include_failed, the failed
        step itself, which may or may not have run: its compensation voids it).

        The order row is locked while the steps are read, as `succeeded` locks it: a step
        that applies concurrently is either counted here or sees the order turned back."""
        with self.db.write() as session:
            order = session.get(Order, order_id, with_for_update=True)
            statuses = dict(
                session.execute(
                    select(SagaStep.name, SagaStep.status).where(SagaStep.order_id == order_id)
                ).all()
            )
            index = saga.STEP_NAMES.index(failed_step)
            owed = [s for s in saga.SAGA[:index] if statuses.get(s.name) == SUCCEEDED]
            if include_failed:
                owed.append(saga.SAGA[index])
            compensations = [s.compensation for s in reversed(owed) if s.compensation]
            order.failed_step, order.failure_reason = failed_step, reason
            order.status = COMPENSATING if compensations else FAILED
            order.updated_at = utcnow()
            for later in saga.SAGA[index + 1 :]:
                row = self._row(session, order_id, later.name)
                if row.status == PENDING_STEP:
                    row.status = NOT_RUN
            for offset, name in enumerate(compensations):
                row = self._row(session, order_id, name, "compensation")
                row.position = COMPENSATION_POSITION + offset
                if row.status not in DONE:
                    row.status = PENDING_STEP
            return compensations

    def step(self, order_id: int, name: str) -> dict | None:
        with self.db.read() as session:
            row = session.get(SagaStep, (order_id, name))
            if row is None:
                return None
            return {
                "name": row.name,
                "kind": row.kind,
                "status": row.status,
                "attempts": row.attempts,
                "error": row.error,
                "detail": row.detail,
            }

    def statuses(self, order_id: int) -> dict[str, str]:
        with self.db.read() as session:
            rows = session.execute(
                select(SagaStep.name, SagaStep.status).where(SagaStep.order_id == order_id)
            )
            return {row.name: row.status for row in rows}

    def owed_compensations(self, order_id: int) -> list[str]:
        """Compensations recorded for this order that have not yet succeeded, in order."""
        with self.db.read() as session:
            rows = session.scalars(
                select(SagaStep)
                .where(SagaStep.order_id == order_id, SagaStep.kind == "compensation")
                .order_by(SagaStep.position)
            )
            return [row.name for row in rows if row.status not in DONE]

    def owe_compensation(self, order_id: int, name: str) -> None:
        """Record a compensation as owed before it is sent, so that if its message is lost
        the stall check still finds it."""
        with self.db.write() as session:
            row = self._row(session, order_id, name, "compensation")
            if row.status not in DONE:
                row.status = PENDING_STEP

    def stalled(self, idle_seconds: float, now: float | None = None) -> list[tuple[int, str, str]]:
        """Sagas that owe work but have shown no progress for `idle_seconds`: for each, the
        (order, step or compensation, its status) it waits on. Catches work the broker lost
        (a Redis that lost its last writes, a queue purged by hand) or holds for a killed
        worker, forward or backward, before or after the order completed (publication).

        Owed work is the first unsettled row, by position, of the kind the order's status
        calls for: forward steps while PENDING and, once COMPLETED, those after the pivot
        (publication); compensations while COMPENSATING and once FAILED. A NEEDS_ATTENTION
        order, or a first row already dead-lettered, belongs to the DLQ."""
        cutoff = (utcnow().timestamp() if now is None else now) - idle_seconds
        forward = and_(Order.status.in_((PENDING, COMPLETED)), SagaStep.kind == "step")
        backward = and_(Order.status.in_((COMPENSATING, FAILED)), SagaStep.kind == "compensation")
        with self.db.read() as session:
            rows = session.execute(
                select(
                    SagaStep.order_id,
                    SagaStep.name,
                    SagaStep.status,
                    Order.updated_at.label("order_updated_at"),
                )
                .join(Order, Order.id == SagaStep.order_id)
                .where(SagaStep.status.in_((*OWED, DEAD_LETTERED)), or_(forward, backward))
                .order_by(SagaStep.order_id, SagaStep.position, SagaStep.name)
            ).all()
            waiting: dict = {}
            for row in rows:
                waiting.setdefault(row.order_id, row)
            last_activity: dict = {}
            ids = list(waiting)
            for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500)):
                last_activity.update(
                    session.execute(
                        select(SagaStep.order_id, func.max(SagaStep.updated_at))
                        .where(SagaStep.order_id.in_(chunk))
                        .group_by(SagaStep.order_id)
                    ).all()
                )
        stalled = []
        for order_id, row in waiting.items():
            if row.status == DEAD_LETTERED:
                continue
            moments = [t for t in (row.order_updated_at, last_activity.get(order_id)) if t]
            if max(_epoch(t) for t in moments) <= cutoff:
                stalled.append((order_id, row.name, row.status))
        return stalled

    def order_status(self, order_id: int) -> str:
        with self.db.read() as session:
            return session.get(Order, order_id).status
