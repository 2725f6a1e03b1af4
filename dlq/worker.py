"""The DLQ worker: retries parked saga work with growing delays; when every retry has
failed (failure class 5) it sends one Slack alert and leaves the entry to a human.

`handle(entry)` does one entry's worth of work and is what the tests drive; `main()` is the
loop the `dlq` process runs.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from app.saga.log import error_text
from dlq.slack import AlertFailed, SlackAlerter, alert_text
from dlq.store import NEEDS_HUMAN, RETRYING, DeadLetterStore

log = logging.getLogger("saga.dlq")


class DeadLetterWorker:
    def __init__(self, store: DeadLetterStore, saga, alerter: SlackAlerter, settings):
        self.store, self.saga, self.alerter = store, saga, alerter
        self.max_attempts = settings.dlq_max_attempts
        self.lease = settings.dlq_lease_seconds
        self.poll = settings.dlq_poll_interval
        self.alert_retry = settings.dlq_alert_retry_seconds
        self.stall_seconds = settings.saga_stall_seconds
        self.stall_check_every = settings.saga_stall_check_seconds

    def handle(self, entry: dict) -> str:
        if entry["status"] == RETRYING:
            return self._retry(entry)
        if entry["status"] == NEEDS_HUMAN and not entry["alerted"]:
            return self._alert(entry)
        self.store.unschedule(entry["id"])
        return "nothing to do"

    def _retry(self, entry: dict) -> str:
        eid = entry["id"]
        attempt = self.store.start_attempt(eid)  # counted first: a crash still counts
        fields = f"dlq_id={eid} order_id={entry['order_id']} step={entry['name']}"
        if attempt > self.max_attempts:
            # Earlier attempts never came back (they killed or hung this worker): stop here.
            self.store.attempt_failed(
                eid,
                "WorkerLost",
                "WorkerLost: the DLQ worker died during every retry",
                give_up=True,
                alert_after=self.lease,
            )
            return self._alert(self.store.get(eid))
        try:
            outcome = self.saga.retry(entry["order_id"], entry["name"])
        except Exception as exc:
            give_up = attempt >= self.max_attempts
            self.store.attempt_failed(
                eid, type(exc).__name__, error_text(exc), give_up, alert_after=self.lease
            )
            log.warning(
                "retry failed %s attempt=%s/%s error=%r",
                fields,
                attempt,
                self.max_attempts,
                str(exc),
            )
            if give_up:
                return self._alert(self.store.get(eid))
            return "retry failed; will retry"
        self.store.resolve(eid, f"retried by the DLQ worker: {outcome}")
        log.info("retry succeeded %s attempt=%s outcome=%r", fields, attempt, outcome)
        return outcome

    def _alert(self, entry: dict) -> str:
        eid, text = entry["id"], alert_text(entry)
        if not self.alerter.configured:
            log.error("ALERT (Slack not configured) dlq_id=%s\n%s", eid, text)
            self.store.update(eid, alerted=True, alerted_via="log")
            self.store.unschedule(eid)
            return "alerted in the log"
        try:
            self.alerter.send(text)
        except AlertFailed as exc:
            # Never lose the alert: log it in full now, and try Slack again later.
            log.error("ALERT (Slack failed: %s; will retry) dlq_id=%s\n%s", exc, eid, text)
            self.store.update(eid, alert_error=str(exc))
            self.store.schedule(eid, self.store.clock() + self.alert_retry)
            return "alert failed; will retry"
        self.store.update(eid, alerted=True, alerted_via="slack", alert_error="")
        self.store.unschedule(eid)
        log.warning(
            "alert sent to Slack dlq_id=%s order_id=%s step=%s",
            eid,
            entry["order_id"],
            entry["name"],
        )
        return "alerted on Slack"

    def run_once(self) -> bool:
        entry = self.store.claim(self.lease)
        if entry is None:
            return False
        if entry is False:
            return True  # it needed nothing more; look for the next
        try:
            self.handle(entry)
        except Exception:
            # An unexpected error (Redis blip, a bug) must not kill the loop; the lease
            # makes the entry due again.
            log.exception("DLQ worker failed on dlq_id=%s", entry["id"])
        return True

    def run(self, stop: threading.Event) -> None:
        log.info("DLQ worker started: max_attempts=%s", self.max_attempts)
        next_stall_check = 0.0
        while not stop.is_set():
            try:
                if time.monotonic() >= next_stall_check:
                    next_stall_check = time.monotonic() + self.stall_check_every
                    for entry in self.saga.park_stalled(self.stall_seconds):
                        log.warning("parked a stalled saga dlq_id=%s", entry["id"])
                busy = self.run_once()
            except Exception:
                log.exception("DLQ worker could not reach Redis; retrying")
                busy = False
            if not busy:
                stop.wait(self.poll)
        log.info("DLQ worker stopped")


def build_worker(settings) -> DeadLetterWorker:
    from app.bootstrap import build_runtime
    from app.saga.orchestrator import Saga
    from tasks.celery_app import create_celery

    runtime = build_runtime(settings)
    saga = Saga(runtime, create_celery(settings).dispatcher)
    return DeadLetterWorker(runtime.dead_letters, saga, SlackAlerter(settings), settings)


def main() -> None:
    from app.logs import configure_logging
    from config.settings import Settings

    settings = Settings.from_env()
    configure_logging(settings.log_level)
    worker = build_worker(settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    worker.run(stop)
