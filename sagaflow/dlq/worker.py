"""The DLQ worker: sends parked saga work back to its service's queue with growing delays;
when every retry has failed (failure class 5) it sends one Slack alert and leaves the entry
to a human. It needs Redis and nothing else: the work runs where its service lives, and
closes its entry (or records its failure) from there.

`handle(entry)` does one entry's worth of work and is what the tests drive; `run()` is the
loop the `dlq` process runs.
"""

from __future__ import annotations

import logging
import threading

from sagaflow.dlq.alerts import AlertFailed, alert_text
from sagaflow.dlq.store import NEEDS_HUMAN, RETRYING, DeadLetterStore
from sagaflow.metrics import count_alert

log = logging.getLogger("sagaflow.dlq")


class DeadLetterWorker:
    def __init__(self, store: DeadLetterStore, runner, alerter, settings, cli: str):
        self.store, self.runner, self.alerter, self.cli = store, runner, alerter, cli
        self.max_attempts = settings.dlq_max_attempts
        self.lease = settings.dlq_lease_seconds
        self.poll = settings.dlq_poll_interval
        self.alert_retry = settings.dlq_alert_retry_seconds

    def handle(self, entry: dict) -> str:
        if entry["status"] == RETRYING:
            return self._retry(entry)
        if entry["status"] == NEEDS_HUMAN and not entry["alerted"]:
            return self._alert(entry)
        self.store.unschedule(entry["id"])
        return "nothing to do"

    def _retry(self, entry: dict) -> str:
        eid = entry["id"]
        attempt = self.store.start_attempt(eid)  # counted first: a lost attempt still counts
        fields = f"dlq_id={eid} saga_id={entry['saga_id']} step={entry['name']}"
        if attempt > self.max_attempts:
            # Earlier attempts never came back (their worker died, or the message was lost)
            # or failed: stop here.
            self.store.attempt_failed(
                eid,
                entry.get("error_class") or "WorkerLost",
                entry.get("error") or "the work never came back from its retries",
                give_up=True,
                alert_after=self.lease,
            )
            return self._alert(self.store.get(eid))
        try:
            sent = self.runner.redispatch(entry)
        except ValueError as exc:  # nothing could send it again: a human must look
            self.store.attempt_failed(eid, "NotRetryable", str(exc), give_up=True)
            return self._alert(self.store.get(eid))
        # The claim holds the entry for a lease: if the work never reports back (its
        # message lost, its worker killed), the entry is due again then.
        log.info("retry sent %s attempt=%s/%s: %s", fields, attempt, self.max_attempts, sent)
        return sent

    def _alert(self, entry: dict) -> str:
        eid, text = entry["id"], alert_text(entry, self.cli)
        if not self.alerter.configured:
            log.error("ALERT (Slack not configured) dlq_id=%s\n%s", eid, text)
            self.store.update(eid, alerted=True, alerted_via="log")
            self.store.unschedule(eid)
            count_alert(self.store.redis, "log")
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
        count_alert(self.store.redis, "slack")
        log.warning(
            "alert sent to Slack dlq_id=%s saga_id=%s step=%s",
            eid,
            entry["saga_id"],
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
        while not stop.is_set():
            try:
                busy = self.run_once()
            except Exception:
                log.exception("DLQ worker could not reach Redis; retrying")
                busy = False
            if not busy:
                stop.wait(self.poll)
        log.info("DLQ worker stopped")
