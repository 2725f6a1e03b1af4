"""The saga log: one row per step and compensation of an order, in the orders database.

It is the one truth that GET /orders/<id>, the DLQ, alerts and restarts all read.
Order status changes are written in the same transaction as the step row that causes them.
"""

from __future__ import annotations

from datetime import UTC

from sqlalchemy import select

from app.db import Database
from app.ledger import utcnow
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
DONE = (SUCCEEDED, SKIPPED)
COMPENSATION_POSITION = 100  # compensations sort after the forward steps


def _epoch(moment) -> float:
    # SQLite hands back naive datetimes; every time we store is UTC.
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def error_text(exc: BaseException | str) -> str:
    if isinstance(exc, str):
        return exc
    return f"{type(exc).__name__}: {exc}"[:2000]


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

    def started(self, order_id: int, name: str, kind: str) -> None:
        with self.db.write() as session:
            row = self._row(session, order_id, name, kind)
            row.status, row.attempts = RUNNING, row.attempts + 1
            row.started_at = row.started_at or utcnow()

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
    ) -> None:
        with self.db.write() as session:
            row = self._row(session, order_id, name)
            row.status = SKIPPED if skipped else SUCCEEDED
            row.detail, row.error, row.finished_at = detail, None, utcnow()
            order = session.get(Order, order_id, with_for_update=True)
            if payment is not None:
                OrderPaymentService.record(session, order_id, *payment)
            if completes_order and order.status in (PENDING, NEEDS_ATTENTION):
                order.status, order.failed_step, order.failure_reason = COMPLETED, None, None
                order.updated_at = utcnow()
            elif order.status == NEEDS_ATTENTION and not self._anything_stuck(session, order_id):
                # A stuck step was retried successfully: the saga is moving again.
                order.status = COMPENSATING if row.kind == "compensation" else PENDING
                order.updated_at = utcnow()

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
        with self.db.write() as session:
            row = self._row(session, order_id, name)
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
        self, order_id: int, failed_step: str, reason: str, compensations: list[str]
    ) -> None:
        """Record why the order fails and which compensations it is owed, newest first."""
        with self.db.write() as session:
            order = session.get(Order, order_id, with_for_update=True)
            order.failed_step, order.failure_reason = failed_step, reason
            order.status = COMPENSATING if compensations else FAILED
            order.updated_at = utcnow()
            for offset, name in enumerate(compensations):
                row = self._row(session, order_id, name, "compensation")
                row.position = COMPENSATION_POSITION + offset
                if row.status not in DONE:
                    row.status = PENDING_STEP

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

    def stalled(self, idle_seconds: float) -> list[tuple[int, str]]:
        """Sagas that should be moving but have shown no progress for `idle_seconds`: the
        (order, step or compensation) each is waiting on. Catches work the broker lost
        (a Redis without persistence restarted, a queue purged by hand)."""
        cutoff = utcnow().timestamp() - idle_seconds
        waiting: list[tuple[int, str]] = []
        with self.db.read() as session:
            orders = session.scalars(
                select(Order).where(Order.status.in_((PENDING, COMPENSATING)))
            ).all()
            for order in orders:
                steps = session.scalars(
                    select(SagaStep)
                    .where(SagaStep.order_id == order.id)
                    .order_by(SagaStep.position)
                ).all()
                moments = [order.created_at, order.updated_at] + [
                    t for s in steps for t in (s.started_at, s.finished_at) if t
                ]
                if max(_epoch(t) for t in moments) > cutoff:
                    continue
                kind = "compensation" if order.status == COMPENSATING else "step"
                pending = [s for s in steps if s.kind == kind and s.status not in DONE]
                if pending and pending[0].status != DEAD_LETTERED:
                    waiting.append((order.id, pending[0].name))
        return waiting

    def order_status(self, order_id: int) -> str:
        with self.db.read() as session:
            return session.get(Order, order_id).status

    def set_order_status(self, order_id: int, status: str) -> None:
        with self.db.write() as session:
            order = session.get(Order, order_id, with_for_update=True)
            order.status, order.updated_at = status, utcnow()
