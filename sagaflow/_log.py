"""The saga log: one row per saga instance and one per step or compensation, in the
runtime's own tables (`sagaflow_*`) in the home service's database.

Only the orchestrator writes it (from the workers' events, sagaflow/_projector.py), except
`create`, which the starter calls inside its own transaction so that the business record
and its saga appear together. Everyone else reads it: the API's timeline, the CLI, the
stall check.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, overload

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    and_,
    delete,
    func,
    or_,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sagaflow._db import DatabaseHandle
from sagaflow._ledger import utcnow
from sagaflow._status import DONE, OWED, SETTLED, SagaStatus, StepStatus, WorkKind
from sagaflow._workflow import Workflow

COMPENSATION_POSITION = 100  # compensations sort after the forward steps


class SagaBase(DeclarativeBase):
    pass


class SagaInstance(SagaBase):
    __tablename__ = "sagaflow_instances"
    saga_id: Mapped[str] = mapped_column(String(80), primary_key=True)
    workflow: Mapped[str] = mapped_column(String(40))
    business_key: Mapped[str] = mapped_column(String(40), index=True)
    # The workflow's version it started on (Workflow.version; NULL: before it was kept).
    version: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # Its trace's W3C context (sagaflow.tracing; NULL: not traced), so the console shows
    # the trace and an operator's action on it joins the trace.
    traceparent: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(20), index=True)
    turned_back: Mapped[int] = mapped_column(Integer, default=0)
    context: Mapped[str] = mapped_column(Text, default="{}")
    failed_step: Mapped[str | None] = mapped_column(String(40), nullable=True)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The id of the last stream entry applied to this saga (sagaflow/_projector.py).
    last_event_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SagaStepRow(SagaBase):
    __tablename__ = "sagaflow_steps"
    saga_id: Mapped[str] = mapped_column(ForeignKey("sagaflow_instances.saga_id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    position: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(120), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Any change to the row counts as progress (a retry being scheduled too): the stall
    # check reads it, so work that merely waits for its retry never looks stuck.
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class OperatorAction(SagaBase):
    """Who did what to a saga's parked work, and how it went (sagaflow/dlq/actions.py)."""

    __tablename__ = "sagaflow_operator_actions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    saga_id: Mapped[str] = mapped_column(String(80), index=True)
    entry_id: Mapped[str] = mapped_column(String(140))
    actor: Mapped[str] = mapped_column(String(120))
    action: Mapped[str] = mapped_column(String(20))
    note: Mapped[str] = mapped_column(Text, default="")
    outcome: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SagaArchived(SagaBase):
    """A finished saga moved out of the hot tables (SagaLog.archive), whole: its timeline
    as JSON, found by id like any other (sagaflow migration 0005)."""

    __tablename__ = "sagaflow_archive"
    saga_id: Mapped[str] = mapped_column(String(80), primary_key=True)
    workflow: Mapped[str] = mapped_column(String(40))
    business_key: Mapped[str] = mapped_column(String(40), index=True)
    status: Mapped[str] = mapped_column(String(20))
    timeline: Mapped[str] = mapped_column(Text)
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    archived_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# What may be archived: a saga that will not move again (nothing owed, nothing parked):
# finished, and each row settled or the step that failed.
FINAL = (SagaStatus.COMPLETED, SagaStatus.FAILED)
AT_REST = (*SETTLED, StepStatus.FAILED)


@overload
def epoch(moment: datetime) -> float: ...
@overload
def epoch(moment: None) -> None: ...
@overload
def epoch(moment: datetime | None) -> float | None: ...
def epoch(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    if moment.tzinfo is None:  # SQLite hands back naive datetimes; every time we store is UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _iso(moment: datetime | None) -> str | None:
    return moment.replace(tzinfo=moment.tzinfo or UTC).isoformat() if moment else None


def step_view(row: SagaStepRow) -> dict[str, Any]:
    return {
        "name": row.name,
        "kind": row.kind,
        "status": row.status,
        "attempts": row.attempts,
        "error": row.error,
        "detail": row.detail,
        "worker": row.worker,
        "started_at": _iso(row.started_at),
        "finished_at": _iso(row.finished_at),
    }


class SagaLog:
    def __init__(self, db: DatabaseHandle, workflows: dict[str, Workflow]) -> None:
        self.db, self.workflows = db, workflows

    # --- starting ------------------------------------------------------------------

    @staticmethod
    def create(session: Session, workflow: Workflow, ctx: Any, traceparent: str = "") -> str:
        """Record a new saga and its plan, in the caller's transaction; `traceparent`: the
        W3C context of its trace, if it is traced (sagaflow.tracing)."""
        saga_id = workflow.saga_id(ctx)
        session.add(
            SagaInstance(
                saga_id=saga_id,
                workflow=workflow.name,
                business_key=str(workflow.key(ctx)),
                version=workflow.version,
                traceparent=traceparent or None,
                status=SagaStatus.PENDING,
                context=json.dumps(workflow.parse(ctx).model_dump(mode="json")),
            )
        )
        session.flush()  # the steps' foreign key needs the instance first
        for position, step in enumerate(workflow.steps):
            session.add(
                SagaStepRow(
                    saga_id=saga_id,
                    name=step.name,
                    kind=workflow.kind_of(step.name),
                    position=position,
                    status=StepStatus.PENDING,
                    attempts=0,
                )
            )
        return saga_id

    @staticmethod
    def discard(session: Session, saga_id: str) -> None:
        """Forget a saga that never started (its first message could not be sent)."""
        session.execute(delete(SagaStepRow).where(SagaStepRow.saga_id == saga_id))
        session.execute(delete(SagaInstance).where(SagaInstance.saga_id == saga_id))

    # --- reading -------------------------------------------------------------------

    def timeline(self, saga_id: str) -> dict[str, Any] | None:
        """The saga and every step and compensation; an archived saga's as it was kept,
        with `archived_at`."""
        with self.db.read() as session:
            instance = session.get(SagaInstance, saga_id)
            if instance is None:
                archived = session.get(SagaArchived, saga_id)
                if archived is None:
                    return None
                kept: dict[str, Any] = json.loads(archived.timeline)
                return {**kept, "archived_at": _iso(archived.archived_at)}
            return self._timeline(session, instance)

    @staticmethod
    def _timeline(session: Session, instance: SagaInstance) -> dict[str, Any]:
        rows = session.scalars(
            select(SagaStepRow)
            .where(SagaStepRow.saga_id == instance.saga_id)
            .order_by(SagaStepRow.position, SagaStepRow.name)
        ).all()
        return {
            "saga_id": instance.saga_id,
            "workflow": instance.workflow,
            "version": instance.version,
            "traceparent": instance.traceparent,
            "status": instance.status,
            "failed_step": instance.failed_step,
            "failure_reason": instance.failure_reason,
            "context": json.loads(instance.context),
            "steps": [step_view(r) for r in rows],
            "created_at": _iso(instance.created_at),
            "updated_at": _iso(instance.updated_at),
        }

    # --- bounded history -------------------------------------------------------------

    def archivable(self, finished_before: datetime, limit: int = 1000) -> list[str]:
        """Finished sagas (COMPLETED or FAILED) last changed before `finished_before` with
        every row settled: nothing owed, nothing running, nothing parked."""
        unsettled = (
            select(SagaStepRow.saga_id)
            .where(SagaStepRow.saga_id == SagaInstance.saga_id)
            .where(SagaStepRow.status.not_in(AT_REST))
            .exists()
        )
        with self.db.read() as session:
            return list(
                session.scalars(
                    select(SagaInstance.saga_id)
                    .where(
                        SagaInstance.status.in_(FINAL),
                        SagaInstance.updated_at < finished_before,
                        ~unsettled,
                    )
                    .order_by(SagaInstance.updated_at)
                    .limit(limit)
                )
            )

    def archive(self, saga_ids: list[str]) -> int:
        """Move these sagas out of the hot tables into the archive, each in the same
        transaction as its removal, skipping any that moved since it was chosen."""
        moved = 0
        with self.db.write() as session:
            for saga_id in saga_ids:
                instance = session.get(SagaInstance, saga_id, with_for_update=True)
                if instance is None or instance.status not in FINAL:
                    continue
                kept = self._timeline(session, instance)
                if any(step["status"] not in AT_REST for step in kept["steps"]):
                    continue
                session.add(
                    SagaArchived(
                        saga_id=saga_id,
                        workflow=instance.workflow,
                        business_key=instance.business_key,
                        status=instance.status,
                        timeline=json.dumps(kept),
                        finished_at=instance.updated_at,
                        archived_at=utcnow(),
                    )
                )
                session.execute(delete(SagaStepRow).where(SagaStepRow.saga_id == saga_id))
                session.execute(delete(SagaInstance).where(SagaInstance.saga_id == saga_id))
                moved += 1
        return moved

    def step(self, saga_id: str, name: str) -> dict[str, Any] | None:
        with self.db.read() as session:
            row = session.get(SagaStepRow, (saga_id, name))
            return step_view(row) if row else None

    def statuses(self, saga_id: str) -> dict[str, str]:
        with self.db.read() as session:
            rows = session.execute(
                select(SagaStepRow.name, SagaStepRow.status).where(SagaStepRow.saga_id == saga_id)
            )
            return {row.name: row.status for row in rows}

    def status(self, saga_id: str) -> str | None:
        with self.db.read() as session:
            status: str | None = session.scalar(
                select(SagaInstance.status).where(SagaInstance.saga_id == saga_id)
            )
            return status

    def owed_compensations(self, saga_id: str) -> list[str]:
        with self.db.read() as session:
            rows = session.scalars(
                select(SagaStepRow)
                .where(
                    SagaStepRow.saga_id == saga_id,
                    SagaStepRow.kind == WorkKind.COMPENSATION,
                )
                .order_by(SagaStepRow.position)
            )
            return [row.name for row in rows if row.status not in DONE]

    # --- the stall check -------------------------------------------------------------

    def stalled(self, idle_seconds: float, now: float) -> list[tuple[SagaInstance, str, str]]:
        """Sagas that owe work but have shown no progress for `idle_seconds`: for each,
        (instance, the step or compensation it waits on, that work's status).

        Owed work is the first unsettled row, by position, of the kind the saga's status
        calls for: forward steps while PENDING and, once COMPLETED, those after the pivot;
        compensations while COMPENSATING and once FAILED (an undo owed for a step that
        applied in a race with the turn back). A NEEDS_ATTENTION saga, or a first row
        already dead-lettered, belongs to the DLQ."""
        cutoff = now - idle_seconds
        forward = and_(
            SagaInstance.status.in_((SagaStatus.PENDING, SagaStatus.COMPLETED)),
            SagaStepRow.kind.in_((WorkKind.STEP, WorkKind.AFTER_PIVOT)),
        )
        backward = and_(
            SagaInstance.status.in_((SagaStatus.COMPENSATING, SagaStatus.FAILED)),
            SagaStepRow.kind == WorkKind.COMPENSATION,
        )
        with self.db.read() as session:
            rows = session.execute(
                select(SagaStepRow.saga_id, SagaStepRow.name, SagaStepRow.status)
                .join(SagaInstance, SagaInstance.saga_id == SagaStepRow.saga_id)
                .where(
                    SagaStepRow.status.in_((*OWED, StepStatus.DEAD_LETTERED)),
                    or_(forward, backward),
                )
                .order_by(SagaStepRow.saga_id, SagaStepRow.position, SagaStepRow.name)
            ).all()
            waiting: dict[str, Any] = {}
            for row in rows:
                waiting.setdefault(row.saga_id, row)
            ids = [i for i, row in waiting.items() if row.status != StepStatus.DEAD_LETTERED]
            found = []
            for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500)):
                activity = dict(
                    session.execute(
                        select(SagaStepRow.saga_id, func.max(SagaStepRow.updated_at))
                        .where(SagaStepRow.saga_id.in_(chunk))
                        .group_by(SagaStepRow.saga_id)
                    ).all()
                )
                for instance in session.scalars(
                    select(SagaInstance).where(SagaInstance.saga_id.in_(chunk))
                ):
                    moments = [
                        epoch(t) for t in (instance.updated_at, activity.get(instance.saga_id)) if t
                    ]
                    if max(moments) <= cutoff:
                        row = waiting[instance.saga_id]
                        found.append((instance, row.name, row.status))
            return found
