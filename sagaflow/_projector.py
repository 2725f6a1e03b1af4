"""The orchestrator's bookkeeping: it reads the workers' events from the Redis stream, in
order, and keeps the saga log in the home database; each saga's status follows from its
rows; the workflow's hooks run in the same transaction (the shop mirrors an order's
status and records its payment there).

Reading is at least once (a consumer group; entries are acknowledged after the commit)
and applying is exactly once: an instance remembers the last stream id it applied, and an
event read again after a crash is skipped. Events must be applied in stream order, so one
projector works at a time: it holds a lock in Redis, and a second one started beside it
waits for the lock (a standby). On restart it first re-reads what it had read but not
acknowledged, then goes on with new entries.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from redis import Redis
from redis import exceptions as redis_errors
from redis.commands.core import Script
from redis.exceptions import ResponseError
from sqlalchemy import select
from sqlalchemy.orm import Session

from sagaflow._db import DatabaseHandle
from sagaflow._errors import UnknownVersion
from sagaflow._events import KEYS_GRACE_SECONDS, Event, KeyExpiry, Phase, RedisKeys, saga_keys
from sagaflow._log import COMPENSATION_POSITION, FINAL, SagaInstance, SagaStepRow
from sagaflow._status import DONE, SETTLED, SagaStatus, StepStatus, WorkKind
from sagaflow._workflow import Workflow
from sagaflow.dlq import store as dead_letters

if TYPE_CHECKING:
    from sagaflow.metrics import MetricsRecorder

CONSUMER, LOCK_SECONDS = "projector", 15
# How often a projector looks for reports left in a stream of the old names (written by a
# worker of an earlier release during a rolling deploy) and applies them.
LEGACY_CHECK_SECONDS = 30.0
# Renew the lock if it is ours, take it if it is free.
_HOLD_LOCK = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""
log = logging.getLogger("sagaflow.projector")

# An entry of the event stream as redis returns it: (entry id, fields), bytes undecoded.
StreamEntry = tuple[bytes | str, dict[Any, Any]]

StatusHook = Callable[[object, SagaInstance, str, str], None]  # session, instance, old, new
StepHook = Callable[[object, SagaInstance, Event], None]


@dataclass
class Hooks:
    """How a workflow's owner reacts to its sagas, in the projector's transaction:
    `on_status(session, instance, old, new)` whenever a saga's status changes (completed,
    failed, needs attention, ...), and `on_step(session, instance, event)` for each
    applied step event."""

    on_status: list[StatusHook] = field(default_factory=list)
    on_step: list[StepHook] = field(default_factory=list)


def _stream_order(stream_id: str | None) -> tuple[int, int]:
    if not stream_id:
        return (0, 0)
    millis, _, seq = stream_id.partition("-")
    return int(millis), int(seq or 0)


def _at(event: Event) -> datetime:
    return datetime.fromtimestamp(event.at, UTC)


def derive_status(instance: SagaInstance, rows: list[SagaStepRow], wf: Workflow) -> str:
    """A saga's status is a function of its rows: nothing else is stored that could
    disagree with them."""
    by_name = {r.name: r for r in rows}
    if instance.turned_back:
        compensations = [r for r in rows if r.kind == WorkKind.COMPENSATION]
        if any(r.status == StepStatus.DEAD_LETTERED for r in compensations):
            return SagaStatus.NEEDS_ATTENTION  # never FAILED while an undo is owed
        if all(r.status in DONE for r in compensations):
            return SagaStatus.FAILED
        return SagaStatus.COMPENSATING
    if any(r.status == StepStatus.DEAD_LETTERED and r.kind == WorkKind.STEP for r in rows):
        return SagaStatus.NEEDS_ATTENTION
    pivot = by_name.get(wf.pivot)
    if pivot is not None and pivot.status in DONE:
        return SagaStatus.COMPLETED  # steps after the pivot are retried, never undone
    return SagaStatus.PENDING


def at_rest(instance: SagaInstance, rows: dict[str, SagaStepRow], wf: Workflow) -> bool:
    """The saga is final and will not move again: COMPLETED or FAILED, a row for each of
    its steps (they are made with the saga; a saga the log never recorded is not judged),
    and every row settled but the forward step it turned back at. A step after the pivot
    that failed is still owed (its failure is being routed to the DLQ), and a COMPLETED
    saga's steps after the pivot are pending until they ran."""
    return (
        instance.status in FINAL
        and all(name in rows for name in wf.step_names)
        and all(
            row.status in SETTLED or (row.status == StepStatus.FAILED and row.kind == WorkKind.STEP)
            for row in rows.values()
        )
    )


class Projector:
    def __init__(
        self,
        db: DatabaseHandle,
        redis: Redis | None,
        workflows: dict[str, Workflow],
        hooks: dict[str, Hooks],
        metrics: MetricsRecorder | None = None,
        keys: RedisKeys | None = None,
        legacy: RedisKeys | None = None,
        keys_grace: float = KEYS_GRACE_SECONDS,
    ) -> None:
        self.db, self.redis = db, redis
        # Once a saga is at rest, its markers, inputs and fence expire this soon.
        self.expiry = KeyExpiry(redis, keys_grace) if redis is not None else None
        self.keys = keys or RedisKeys()
        # The keys of an earlier release, drained now and then until nothing writes there.
        self.legacy = legacy if legacy is not None and legacy != self.keys else None
        self._legacy_due = 0.0
        self.workflows, self.hooks = workflows, hooks
        self.metrics = metrics  # sagaflow.metrics.MetricsRecorder, or None
        self.me = f"{socket.gethostname()}:{id(self):x}"
        self.caught_up = False
        self._group_ready = False
        self._hold: Script | None = None  # the lock script, registered on first use

    @property
    def _redis(self) -> Redis:
        """The stream's Redis (None: a projector that only applies the events it is given)."""
        assert self.redis is not None, "this projector has no Redis"
        return self.redis

    # --- one projector at a time ---------------------------------------------------------

    def hold_lock(self) -> bool:
        """Take or renew the projector lock; False while another projector holds it. One
        round trip: the orchestrator asks before every batch, idle or not."""
        if self._hold is None:
            self._hold = self._redis.register_script(_HOLD_LOCK)
        return bool(self._hold(keys=[self.keys.lock], args=[self.me, LOCK_SECONDS]))

    def release_lock(self) -> None:
        """On the way out (with the metrics kept so far); if Redis is already gone
        (stopped with us), the lock expires."""
        try:
            if self.metrics:
                self.metrics.flush(force=True)
            holder = self._redis.get(self.keys.lock) or b""
            if (holder.decode() if isinstance(holder, bytes) else holder) == self.me:
                self._redis.delete(self.keys.lock)
        except redis_errors.RedisError as exc:
            log.warning("could not release the projector lock (it expires): %s", exc)

    # --- reading the stream ------------------------------------------------------------

    def ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            self._redis.xgroup_create(self.keys.stream, self.keys.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def run_once(
        self, batch: int = 500, block_ms: int = 200, linger_ms: int = 20, lingers: int = 3
    ) -> int:
        """Apply the next batch of events; returns how many were read. After the first
        event arrives it lingers a moment for more, and again (at most `lingers` times)
        while more keep coming: one transaction for many events costs the home database
        and this process far less than one for a few, and the log is at most
        linger_ms x lingers behind."""
        self.ensure_group()
        if self.legacy is not None and time.monotonic() >= self._legacy_due:
            self._legacy_due = time.monotonic() + LEGACY_CHECK_SECONDS
            self.drain_legacy(batch)
        try:
            return self._run_once(batch, block_ms, linger_ms, lingers)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                # Redis came back without its data (no persistence): the group is gone
                # with the stream. Make it again on the next round instead of failing on
                # every round for ever.
                self._group_ready = False
                log.warning("the event stream's consumer group is gone; making it again")
            raise

    def _run_once(self, batch: int, block_ms: int, linger_ms: int, lingers: int) -> int:
        # What was read but not acknowledged (a crash before the acknowledgement) comes
        # first, so that events are applied in stream order.
        entries = self._read("0", count=batch)
        if not entries:
            entries = self._read(">", count=batch, block=block_ms)
            for _ in range(lingers if linger_ms else 0):
                if not entries or len(entries) >= batch:
                    break
                time.sleep(linger_ms / 1000)
                more = self._read(">", count=batch - len(entries))
                entries += more
                if not more:
                    break  # nothing came meanwhile: no use waiting longer
        if entries:
            self.apply_entries(entries)
            ids = [entry_id for entry_id, _ in entries]
            self._redis.xack(self.keys.stream, self.keys.group, *ids)
            # applied: the stream keeps only what is not
            self._redis.xdel(self.keys.stream, *ids)
        elif self.metrics:
            self.metrics.flush()  # idle: what earlier batches kept goes out when due
        self.caught_up = len(entries) < batch
        return len(entries)

    def drain_legacy(self, batch: int = 500) -> int:
        """Apply what is left in the stream of the old names (an earlier release's workers
        wrote there), then leave it alone until the next look; how many were applied."""
        old = self.legacy
        if old is None or not self._redis.exists(old.stream):
            return 0
        try:
            self._redis.xgroup_create(old.stream, old.group, id="0")
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        applied = 0
        for start in ("0", ">"):
            while entries := self._read(start, count=batch, keys=old):
                self.apply_entries(entries)
                ids = [entry_id for entry_id, _ in entries]
                self._redis.xack(old.stream, old.group, *ids)
                self._redis.xdel(old.stream, *ids)
                applied += len(entries)
                if start == "0" and len(entries) < batch:
                    break
        if applied:
            log.info("applied %s progress reports left in %s", applied, old.stream)
        return applied

    def _read(
        self, start: str, count: int, block: int | None = None, keys: RedisKeys | None = None
    ) -> list[StreamEntry]:
        """One XREADGROUP of the event stream: its entries, oldest first."""
        keys = keys or self.keys
        # redis types the reply as either protocol's shape; this client speaks RESP2:
        # [[stream, [(entry id, fields), ...]]], or nothing.
        found: Any = self._redis.xreadgroup(
            keys.group, CONSUMER, {keys.stream: start}, count=count, block=block
        )
        entries: list[StreamEntry] = found[0][1] if found else []
        return entries

    def apply_entries(self, entries: list[StreamEntry]) -> None:
        """Apply a batch in one transaction, each saga's events in stream order, each saga
        read and locked once."""
        by_saga: dict[str, list[Any]] = {}
        for entry_id, fields in entries:
            if not fields:
                continue  # deleted from the stream meanwhile
            stream_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            try:
                event = Event.from_fields(fields)
            except (KeyError, ValueError) as exc:
                log.error("skipping a malformed event id=%s error=%r", stream_id, str(exc))
                continue
            by_saga.setdefault(event.saga_id, []).append((stream_id, event))
        finished: list[str] = []  # the keys of the sagas at rest after this batch
        try:
            with self.db.write() as session:
                instances, rows = self._load(session, list(by_saga))
                for saga_id, events in by_saga.items():
                    wf = self._apply_saga(
                        session, saga_id, events, instances.get(saga_id), rows.get(saga_id, {})
                    )
                    if wf is not None:
                        finished += saga_keys(saga_id, wf.step_names + wf.compensation_names)
        except Exception:
            if self.metrics:
                self.metrics.discard()  # the batch will be read again: count it then
            raise
        if self.metrics:
            self.metrics.flush()
        self._expire(finished)

    def _expire(self, keys: list[str]) -> None:
        """After the commit: the keys of sagas at rest expire after the grace, in one round
        trip for the batch. Every batch that touches such a saga does it again (a late
        report may have written a key anew; a crash may have come between the commit and
        this), and a key already closer to its end is left as it is. If Redis fails here
        the keys keep the expiry they were written with: nothing is lost but time."""
        if not keys or self.expiry is None:
            return
        try:
            self.expiry.shorten(keys)
        except redis_errors.RedisError as exc:
            log.warning("could not shorten the expiry of finished sagas' keys: %s", exc)

    def apply(self, session: Session, event: Event, stream_id: str = "") -> None:
        instances, rows = self._load(session, [event.saga_id])
        self._apply_saga(
            session,
            event.saga_id,
            [(stream_id, event)],
            instances.get(event.saga_id),
            rows.get(event.saga_id, {}),
        )

    @staticmethod
    def _load(
        session: Session, saga_ids: list[str]
    ) -> tuple[dict[str, SagaInstance], dict[str, dict[str, SagaStepRow]]]:
        """Every saga of a batch and its rows, in two queries (locked on PostgreSQL)."""
        instances: dict[str, SagaInstance] = {}
        rows: dict[str, dict[str, SagaStepRow]] = {}
        for start in range(0, len(saga_ids), 500):
            chunk = saga_ids[start : start + 500]
            for instance in session.scalars(
                select(SagaInstance).where(SagaInstance.saga_id.in_(chunk)).with_for_update()
            ):
                instances[instance.saga_id] = instance
            for row in session.scalars(select(SagaStepRow).where(SagaStepRow.saga_id.in_(chunk))):
                rows.setdefault(row.saga_id, {})[row.name] = row
        return instances, rows

    # --- applying a saga's events -------------------------------------------------------

    def _apply_saga(
        self,
        session: Session,
        saga_id: str,
        events: list[tuple[str, Event]],
        instance: SagaInstance | None,
        rows: dict[str, SagaStepRow],
    ) -> Workflow | None:
        """Apply one saga's events; its workflow if the saga is now at rest, else None."""
        declared = self.workflows.get(events[0][1].workflow)
        if declared is None:
            log.error("events for unknown workflow %r saga_id=%s", events[0][1].workflow, saga_id)
            return None
        wf = self._plan(declared, instance)
        if instance is None:
            log.warning("event for a saga never recorded saga_id=%s: adding it", saga_id)
            instance = SagaInstance(
                saga_id=saga_id,
                workflow=wf.name,
                business_key=wf.business_key(saga_id),
                status=SagaStatus.PENDING,
                turned_back=0,
                context="{}",
            )
            session.add(instance)
            session.flush()
        hooks = self.hooks.get(wf.name, Hooks())
        for stream_id, event in events:
            if stream_id and _stream_order(stream_id) <= _stream_order(instance.last_event_id):
                continue  # applied before a crash, read again: once is enough
            instance.last_event_id = stream_id or instance.last_event_id
            if event.phase == Phase.TURNED_BACK:
                self._turn_back(session, wf, instance, rows, event)
            else:
                self._step_event(session, wf, instance, rows, event)
                if self.metrics and wf.knows(event.name):
                    self.metrics.event(wf.name, str(wf.kind_of(event.name)), event)
            for hook in hooks.on_step:
                hook(session, instance, event)
            old, new = instance.status, derive_status(instance, list(rows.values()), wf)
            instance.updated_at = _at(event)
            if new != old:
                instance.status = new
                if new in (SagaStatus.PENDING, SagaStatus.COMPLETED) and not instance.turned_back:
                    # Moving again after being stuck: why it stopped is history now.
                    instance.failed_step = instance.failure_reason = None
                if self.metrics:
                    self.metrics.status(wf.name, new)
                for status_hook in hooks.on_status:
                    status_hook(session, instance, old, new)
        return wf if at_rest(instance, rows, wf) else None

    @staticmethod
    def _plan(declared: Workflow, instance: SagaInstance | None) -> Workflow:
        """The plan the saga runs by, its version's: its statuses (the pivot, what turning
        back undoes) are that plan's. The events are applied whatever happens (the log
        must not stop), so a version this build does not know is read by the current
        plan, and said: the orchestrator's build must know every version in flight."""
        try:
            return declared.plan(instance.version if instance is not None else None)
        except UnknownVersion as unknown:
            log.error("%s: applying %s by the current plan", unknown, instance and instance.saga_id)
            return declared

    def _row(
        self,
        session: Session,
        wf: Workflow,
        rows: dict[str, SagaStepRow],
        saga_id: str,
        name: str,
        position: int | None = None,
    ) -> SagaStepRow:
        row = rows.get(name)
        if row is None:
            kind = wf.kind_of(name) if wf.knows(name) else WorkKind.STEP
            if position is None:
                position = (
                    wf.step_names.index(name) if name in wf.step_names else COMPENSATION_POSITION
                )
            row = SagaStepRow(
                saga_id=saga_id,
                name=name,
                kind=kind,
                position=position,
                status=StepStatus.PENDING,
                attempts=0,
            )
            session.add(row)
            rows[name] = row
        return row

    def _step_event(
        self,
        session: Session,
        wf: Workflow,
        instance: SagaInstance,
        rows: dict[str, SagaStepRow],
        event: Event,
    ) -> None:
        row = self._row(session, wf, rows, event.saga_id, event.name)
        done = row.status in DONE  # a repeat of finished work keeps what it achieved
        at = _at(event)
        match event.phase:
            case Phase.STARTED:
                row.attempts += 1
                row.worker = event.worker or row.worker
                row.started_at = row.started_at or at
                if not done:
                    row.status = StepStatus.RUNNING
            case Phase.RETRYING:
                if not done:
                    row.status, row.error = StepStatus.RETRYING, event.error
            case Phase.SUCCEEDED | Phase.SKIPPED:
                row.status = (
                    StepStatus.SUCCEEDED if event.phase == Phase.SUCCEEDED else StepStatus.SKIPPED
                )
                row.detail, row.error, row.finished_at = event.detail, None, at
                if event.ctx is not None and row.kind != WorkKind.COMPENSATION:
                    instance.context = json.dumps(event.ctx)
            case Phase.FAILED:
                if not done:
                    row.status, row.error, row.finished_at = StepStatus.FAILED, event.error, at
                    instance.failed_step = instance.failed_step or event.name
                    instance.failure_reason = instance.failure_reason or event.error
            case Phase.DEAD_LETTERED:
                if not done:
                    row.status, row.error, row.finished_at = (
                        StepStatus.DEAD_LETTERED,
                        event.error,
                        at,
                    )
                    if row.kind == WorkKind.STEP and not instance.turned_back:
                        instance.failed_step = instance.failed_step or event.name
                        instance.failure_reason = (
                            instance.failure_reason or f"{event.name} is stuck: {event.error}"
                        )
                if (
                    self.redis is not None
                    and row.kind != WorkKind.COMPENSATION
                    and instance.context not in (None, "{}")
                ):
                    # A step parked by its callback after its kept input was lost (Redis
                    # failed mid-step): the saga log knows it, so it can be sent again.
                    # The log's context is the last finished step's, which is this one's.
                    eid = dead_letters.entry_id(event.saga_id, event.name)
                    if dead_letters.supply_input(self.redis, eid, json.loads(instance.context)):
                        log.info("gave dlq_id=%s its input from the saga log", eid)
            case Phase.REFUSED:
                if not done:
                    row.status, row.detail, row.finished_at = StepStatus.REFUSED, event.detail, at

    def _turn_back(
        self,
        session: Session,
        wf: Workflow,
        instance: SagaInstance,
        rows: dict[str, SagaStepRow],
        event: Event,
    ) -> None:
        """The saga turns back: the compensations it is owed (newest first) become pending,
        and forward steps it never reached will not run."""
        first_time = not instance.turned_back
        instance.turned_back = 1
        if first_time:
            instance.failed_step = event.name or instance.failed_step
            instance.failure_reason = event.detail or instance.failure_reason
            if event.name in wf.step_names:
                for later in wf.steps_after(event.name):
                    row = rows.get(later)
                    if row is not None and row.status == StepStatus.PENDING:
                        row.status = StepStatus.NOT_RUN
        taken = [r.position for r in rows.values() if r.kind == WorkKind.COMPENSATION]
        start = max(taken, default=COMPENSATION_POSITION - 1) + 1
        for offset, name in enumerate(event.compensations):
            row = self._row(session, wf, rows, event.saga_id, name, position=start + offset)
            if row.status not in DONE and row.status != StepStatus.RUNNING:
                row.status = StepStatus.PENDING
