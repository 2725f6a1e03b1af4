"""The orchestrator process: it keeps the saga log from the workers' events (the
projector), and looks for sagas that stopped moving (the stall check).

It runs next to the home service's database; it never runs a step. The happy path never
waits for it: the chain moves from service to service on its own, and the orchestrator
records what happened a moment later.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from sagaflow._errors import UnknownVersion
from sagaflow._log import SagaLog
from sagaflow._outage import OutageReporter
from sagaflow._projector import Projector
from sagaflow._runner import Runner
from sagaflow._status import StepStatus, WorkKind

log = logging.getLogger("sagaflow.orchestrator")
IDLE_BLOCK_MS = 1000


class StallCheck:
    """Every piece of owed work, forward or backward, before or after the saga completed,
    that has made no progress for `idle_seconds` is parked in the DLQ, which retries it
    and alerts if it keeps failing. A failure whose link_error callback was lost is routed
    as the callback would have."""

    def __init__(
        self,
        saga_log: SagaLog,
        runner: Runner,
        idle_seconds: float,
        waiting: Callable[[], set[str]] | None = None,
    ) -> None:
        self.log, self.runner, self.idle = saga_log, runner, idle_seconds
        # Sagas whose start is still in the home's outbox are not stalled: the relay sends
        # it when the broker is back (a callable returning their ids).
        self.waiting: Callable[[], set[str]] = waiting or (lambda: set())

    def park_stalled(self, now: float | None = None) -> list[str]:
        parked = []
        stalled = self.log.stalled(self.idle, now or time.time())
        waiting = self.waiting() if stalled else set()
        for instance, name, status in stalled:
            if instance.saga_id in waiting:
                continue
            try:
                # By the plan of the version the saga started on.
                wf = self.runner.plan(instance.workflow, instance.version)
            except UnknownVersion as unknown:
                log.error("not checking %s: %s", instance.saga_id, unknown)
                continue
            if status == StepStatus.FAILED:
                log.warning(
                    "routing a failure whose callback was lost saga_id=%s step=%s",
                    instance.saga_id,
                    name,
                )
                self.runner.step_failed(wf, name, instance.saga_id, [])
                continue
            if wf.kind_of(name) == WorkKind.COMPENSATION:
                owed = self.log.owed_compensations(instance.saga_id)
                args = {"saga_id": instance.saga_id, "plan": owed}
            else:
                args = {
                    "saga_id": instance.saga_id,
                    "ctx": json.loads(instance.context),
                    "then": wf.steps_after(name),
                }
            error = f"stalled: no progress for {self.idle:.0f}s (was its message lost?)"
            entry = self.runner.dead_letter(wf, name, instance.saga_id, args, error)
            if entry is None:
                continue  # it succeeded meanwhile: the log will say so in a moment
            log.warning("parked a stalled saga dlq_id=%s", entry["id"])
            parked.append(entry["id"])
        return parked


class Orchestrator:
    def __init__(self, projector: Projector, stall: StallCheck, check_every: float):
        self.projector, self.stall, self.check_every = projector, stall, check_every

    def run(self, stop: threading.Event) -> None:
        log.info("orchestrator started")
        next_check = time.monotonic() + self.check_every
        standby_said = False
        outage = OutageReporter(log)  # Redis or the database down: said once, not per try
        while not stop.is_set():
            try:
                if not self.projector.hold_lock():
                    outage.ok()
                    if not standby_said:
                        log.info("another orchestrator holds the lock: standing by")
                        standby_said = True
                    stop.wait(1.0)
                    continue
                standby_said = False
                # Events wake the blocking read at once; idle, one round a second.
                self.projector.run_once(block_ms=IDLE_BLOCK_MS)
                # Only on a log that is up to date: a lagging one would make moving sagas
                # look stalled.
                if self.projector.caught_up and time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.check_every
                    self.stall.park_stalled()
                outage.ok()
            except Exception as exc:
                outage.failed(exc)
                stop.wait(1.0)
        self.projector.release_lock()
        log.info("orchestrator stopped")
