"""Prometheus metrics for the sagas: outcomes, step durations, failures, retries, the DLQ,
the oldest stuck saga, alerts sent.

Counters and histograms are counted where every worker's work is seen exactly once: the
orchestrator, from the event stream that every process on every host writes to. It adds
each batch's increments to one Redis hash after the batch committed, so the numbers of all
worker processes add up (prometheus_client's multiprocess mode would add up the processes
of one host only). Gauges (the DLQ, stuck sagas) are read when scraped. Any process with
Redis and the saga log serves them (the API's /metrics).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from redis import Redis
from sqlalchemy import func, select

from sagaflow._db import DatabaseHandle
from sagaflow._events import Event, Phase
from sagaflow._log import SagaInstance, epoch
from sagaflow._status import SagaStatus
from sagaflow.dlq.store import DeadLetterStore

KEY = "sagaflow:metrics"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ENDED = (Phase.SUCCEEDED, Phase.SKIPPED, Phase.FAILED, Phase.RETRYING, Phase.DEAD_LETTERED)
FAILURES = (Phase.FAILED, Phase.RETRYING, Phase.DEAD_LETTERED)
# A saga in one of these owes work; how long since the oldest of them moved is the alarm.
UNSETTLED = (SagaStatus.PENDING, SagaStatus.COMPENSATING, SagaStatus.NEEDS_ATTENTION)


def _field(name: str, **labels: str) -> str:
    return json.dumps([name, sorted(labels.items())])


def error_class(error: str) -> str:
    head = error.split(":", 1)[0].strip()
    return head if head.isidentifier() else "Error"


class MetricsRecorder:
    """Collects a batch's increments; `flush` keeps them once the batch is safe and adds
    what it kept to Redis at most every `flush_every` seconds: one HINCRBYFLOAT per field
    for many orders at once, not fifteen per step of each order. A crash loses at most
    that second of increments (the saga log, not the metrics, is the record)."""

    def __init__(
        self, redis: Redis, flush_every: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.redis, self.flush_every, self.clock = redis, flush_every, clock
        # Counts, and sums of seconds: a Counter adds floats as well (typeshed says int).
        self.pending: Counter[str] = Counter()  # the current batch: not committed yet
        self.kept: Counter[str] = Counter()  # committed, not yet in Redis
        self._flushed_at = clock()
        self._started: dict[tuple[str, str], float] = {}

    def event(self, workflow: str, kind: str, event: Event) -> None:
        work = (event.saga_id, event.name)
        if event.phase == Phase.STARTED:
            if len(self._started) > 100_000:  # attempts that never ended (a killed worker)
                self._started.clear()
            self._started[work] = event.at
            return
        if event.phase in ENDED and work in self._started:
            seconds = max(0.0, event.at - self._started.pop(work))
            labels = {"workflow": workflow, "step": event.name, "kind": kind}
            outcome = "ok" if event.phase in (Phase.SUCCEEDED, Phase.SKIPPED) else "error"
            self._observe("sagaflow_step_duration_seconds", seconds, outcome=outcome, **labels)
        if event.phase in FAILURES:
            self.pending[
                _field(
                    "sagaflow_step_failures_total",
                    workflow=workflow,
                    step=event.name,
                    kind=kind,
                    phase=str(event.phase),
                    error_class=error_class(event.error),
                )
            ] += 1
        if event.phase == Phase.RETRYING:
            self.pending[
                _field("sagaflow_step_retries_total", workflow=workflow, step=event.name)
            ] += 1

    def status(self, workflow: str, status: str) -> None:
        self.pending[_field("sagaflow_sagas_reached_total", workflow=workflow, status=status)] += 1

    def _observe(self, name: str, seconds: float, **labels: str) -> None:
        # The one bucket the value falls in ("slot"); the collector adds them up into
        # Prometheus's cumulative buckets and the count when scraped.
        slot = next((str(bound) for bound in BUCKETS if seconds <= bound), "+Inf")
        self.pending[_field(f"{name}_slot", le=slot, **labels)] += 1
        self.pending[_field(f"{name}_sum", **labels)] += seconds  # type: ignore[assignment]

    def flush(self, force: bool = False) -> None:
        """The batch is committed: keep its increments; send what is kept when due."""
        self.kept.update(self.pending)
        self.pending.clear()
        if not self.kept or not (force or self.clock() - self._flushed_at >= self.flush_every):
            return
        pipe = self.redis.pipeline(transaction=True)
        for field, amount in self.kept.items():
            pipe.hincrbyfloat(KEY, field, float(amount))
        pipe.execute()
        self.kept.clear()
        self._flushed_at = self.clock()

    def discard(self) -> None:
        self.pending.clear()


def count_alert(redis: Redis, via: str) -> None:
    """An alert reached a human (the DLQ worker calls it)."""
    redis.hincrbyfloat(KEY, _field("sagaflow_alerts_sent_total", via=via), 1.0)


class SagaCollector:
    """A prometheus_client collector over the Redis hash, the DLQ and the saga log."""

    def __init__(
        self,
        redis: Redis,
        dead_letters: DeadLetterStore,
        saga_db: DatabaseHandle,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis, self.dead_letters, self.db, self.clock = redis, dead_letters, saga_db, clock

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        stored: dict[str, list[Any]] = {}
        for raw_field, raw_value in self.redis.hgetall(KEY).items():
            name, labels = json.loads(raw_field)
            stored.setdefault(name, []).append((dict(labels), float(raw_value)))
        yield from self._counters(stored)
        yield from self._histograms(stored)
        yield from self._gauges()

    def _counters(self, stored: dict[str, list[Any]]) -> Iterator[Metric]:
        helps = {
            "sagaflow_sagas_reached_total": "Sagas that reached a status, by workflow and status",
            "sagaflow_step_failures_total": "Failed attempts of steps and compensations, by "
            "step, phase (failed: business; retrying; dead_lettered) and error class",
            "sagaflow_step_retries_total": "Retries scheduled, by step",
            "sagaflow_alerts_sent_total": "Alerts that reached a human, by channel",
        }
        for name, help_text in helps.items():
            samples = stored.get(name, [])
            keys = sorted({k for labels, _ in samples for k in labels})
            family = CounterMetricFamily(name.removesuffix("_total"), help_text, labels=keys)
            for labels, value in samples:
                family.add_metric([labels.get(k, "") for k in keys], value)
            yield family

    def _histograms(self, stored: dict[str, list[Any]]) -> Iterator[Metric]:
        name = "sagaflow_step_duration_seconds"
        series: dict[tuple[Any, ...], dict[str, Any]] = {}

        def one(labels: dict[str, str]) -> dict[str, Any]:
            return series.setdefault(tuple(sorted(labels.items())), {"buckets": Counter()})

        # Cumulative buckets as an older version stored them, plus the slots this one
        # stores, added up bound by bound.
        for labels, value in stored.get(f"{name}_bucket", []):
            le = labels.pop("le")
            one(labels)["buckets"][le] += value
        bounds = [*map(str, BUCKETS), "+Inf"]
        for labels, value in stored.get(f"{name}_slot", []):
            slot = labels.pop("le")
            buckets = one(labels)["buckets"]
            for bound in bounds[bounds.index(slot) :]:
                buckets[bound] += value
        for labels, value in stored.get(f"{name}_sum", []):
            one(labels)["sum"] = value
        keys = ["workflow", "step", "kind", "outcome"]
        family = HistogramMetricFamily(
            name, "Duration of each attempt of a step or compensation", labels=keys
        )
        for labels, data in series.items():
            labels = dict(labels)
            buckets = [(str(b), data["buckets"].get(str(b), 0.0)) for b in BUCKETS]
            buckets.append(("+Inf", data["buckets"].get("+Inf", 0.0)))
            family.add_metric(
                [labels.get(k, "") for k in keys], buckets, sum_value=data.get("sum", 0.0)
            )
        yield family

    def _gauges(self) -> Iterator[Metric]:
        entries = GaugeMetricFamily(
            "sagaflow_dlq_entries", "Entries in the dead-letter queue, by status", labels=["status"]
        )
        by_status = Counter(e["status"] for e in self.dead_letters.entries())
        for status in ("retrying", "needs_human", "resolved"):
            entries.add_metric([status], by_status.get(status, 0))
        yield entries
        sagas = GaugeMetricFamily("sagaflow_sagas", "Sagas by current status", labels=["status"])
        with self.db.read() as session:
            counts = dict(
                session.execute(
                    select(SagaInstance.status, func.count()).group_by(SagaInstance.status)
                ).all()
            )
            oldest = session.scalar(
                select(func.min(SagaInstance.updated_at)).where(SagaInstance.status.in_(UNSETTLED))
            )
            by_version = session.execute(
                select(SagaInstance.workflow, SagaInstance.version, func.count())
                .where(SagaInstance.status.in_(UNSETTLED))
                .group_by(SagaInstance.workflow, SagaInstance.version)
            ).all()
        for status in SagaStatus:
            sagas.add_metric([status.value], counts.get(status.value, 0))
        yield sagas
        # An old version can be retired once no saga started on it is still moving.
        in_flight = GaugeMetricFamily(
            "sagaflow_sagas_in_flight",
            "Sagas still moving, by workflow and the version they started on",
            labels=["workflow", "version"],
        )
        for workflow, version, count in by_version:
            in_flight.add_metric([workflow, version or "unrecorded"], count)
        yield in_flight
        age = max(0.0, self.clock() - epoch(oldest)) if oldest else 0.0
        yield GaugeMetricFamily(
            "sagaflow_oldest_stuck_saga_age_seconds",
            "Seconds since the oldest saga that still owes work last moved (0: none)",
            value=age,
        )
