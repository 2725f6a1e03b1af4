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
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from sagaflow._dependencies import outage_text, recovered_text, unreachable
from sagaflow._errors import InputNotKnown
from sagaflow._outage import OutageReporter, cause
from sagaflow.dlq.alerts import Alerter, AlertFailed, alert_text
from sagaflow.dlq.store import NEEDS_HUMAN, RETRYING, DeadLetterStore
from sagaflow.metrics import count_alert

if TYPE_CHECKING:
    from sagaflow._runner import Runner

log = logging.getLogger("sagaflow.dlq")
OUTAGE_CHECK_SECONDS = 2.0
EXPIRY_CHECK_SECONDS = 60.0  # how often resolved entries past their retention are deleted


class WorkerSettings(Protocol):
    """What the DLQ worker reads from the settings (the shop's config.settings.Settings)."""

    @property
    def dlq_max_attempts(self) -> int: ...
    @property
    def dlq_lease_seconds(self) -> float: ...
    @property
    def dlq_poll_interval(self) -> float: ...
    @property
    def dlq_alert_retry_seconds(self) -> float: ...
    @property
    def dlq_retention_seconds(self) -> float: ...
    @property
    def outage_alert_seconds(self) -> float: ...
    @property
    def outage_budget_seconds(self) -> float: ...
    @property
    def step_retry_backoff_max(self) -> float: ...
    @property
    def saga_stall_check_seconds(self) -> float: ...
    @property
    def trace_url_template(self) -> str: ...


class DeadLetterWorker:
    def __init__(
        self,
        store: DeadLetterStore,
        runner: Runner,
        alerter: Alerter,
        settings: WorkerSettings,
        cli: str,
    ) -> None:
        self.store, self.runner, self.alerter, self.cli = store, runner, alerter, cli
        self.max_attempts = settings.dlq_max_attempts
        self.lease = settings.dlq_lease_seconds
        self.poll = settings.dlq_poll_interval
        self.alert_retry = settings.dlq_alert_retry_seconds
        self.retention = settings.dlq_retention_seconds
        self.trace_url_template = settings.trace_url_template
        self.outage_alert = settings.outage_alert_seconds
        self.outage_budget = settings.outage_budget_seconds
        # Waiting work retries at least every backoff maximum, so an outage that has seen
        # no failure for three of those is over even if no work has reached it yet.
        self.outage_quiet = 3 * settings.step_retry_backoff_max + 30
        # How long parked work may wait for its input from the saga log before a human
        # is asked (the orchestrator normally supplies it within a second).
        self.input_wait = max(60.0, settings.saga_stall_check_seconds * 4)

    def handle(self, entry: dict[str, Any]) -> str:
        if entry["status"] == RETRYING:
            return self._retry(entry)
        if entry["status"] == NEEDS_HUMAN and not entry["alerted"]:
            return self._alert(entry)
        self.store.unschedule(entry["id"])
        return "nothing to do"

    def _succeeded(self, entry: dict[str, Any]) -> bool:
        """The entry's work succeeded by another path (a redelivery of a killed attempt):
        the entry is closed by itself, and nobody is paged for it."""
        if not self.runner.events.succeeded(entry["saga_id"], entry["name"]):
            return False
        self.store.resolve(entry["id"], "its work has succeeded")
        log.info("dlq_id=%s resolved: its work has succeeded", entry["id"])
        return True

    def _retry(self, entry: dict[str, Any]) -> str:
        eid = entry["id"]
        if self._succeeded(entry):
            return "already succeeded"
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
            return self._alert_again(eid)
        try:
            sent = self.runner.redispatch(entry)
        except InputNotKnown as exc:
            # The orchestrator copies the input from the saga log; wait for it (without
            # spending an attempt) for a while before asking a human.
            if self.store.clock() - entry["first_failed_at"] < self.input_wait:
                self.store.refund_attempt(eid)
                self.store.schedule(eid, self.store.clock() + self.store.backoff(0))
                log.info("waiting for the input of %s from the saga log", fields)
                return "waiting for its input"
            self.store.attempt_failed(eid, "InputNotKnown", str(exc), give_up=True)
            return self._alert_again(eid)
        except ValueError as exc:  # nothing could send it again: a human must look
            self.store.attempt_failed(eid, "NotRetryable", str(exc), give_up=True)
            return self._alert_again(eid)
        # The claim holds the entry for a lease: if the work never reports back (its
        # message lost, its worker killed), the entry is due again then.
        log.info("retry sent %s attempt=%s/%s: %s", fields, attempt, self.max_attempts, sent)
        return sent

    def _alert_again(self, eid: str) -> str:
        """Alert for an entry just updated (so it is there to read)."""
        entry = self.store.get(eid)
        assert entry is not None, eid
        return self._alert(entry)

    def _alert(self, entry: dict[str, Any]) -> str:
        eid, text = entry["id"], alert_text(entry, self.cli, self.trace_url_template)
        if self._succeeded(entry):
            return "already succeeded"
        fingerprint = f"{entry.get('error_class')}|{entry.get('error')}"
        if self.store.alerted_before(eid, fingerprint):
            # The same incident again (the same work, the same error): paged once already.
            self.store.update(eid, alerted=True, alerted_via="earlier alert")
            self.store.unschedule(eid)
            log.warning("dlq_id=%s needs a human again, same error: not paging again", eid)
            return "alerted before"
        outage = self.runner.outages.rows().get(entry.get("dependency") or "")
        if outage and outage.get("alerted"):
            # Parked by an outage already paged for: one alert for the outage, not one
            # per order (the outage alert says how many waited).
            self.store.update(eid, alerted=True, alerted_via="outage alert")
            self.store.remember_alert(eid, fingerprint)
            self.store.unschedule(eid)
            log.warning(
                "dlq_id=%s needs a human: covered by the %s outage alert",
                eid,
                entry["dependency"],
            )
            return "covered by the outage alert"
        if not self.alerter.configured:
            log.error("ALERT (Slack not configured) dlq_id=%s\n%s", eid, text)
            self.store.update(eid, alerted=True, alerted_via="log")
            self.store.remember_alert(eid, fingerprint)
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
        self.store.remember_alert(eid, fingerprint)
        self.store.unschedule(eid)
        count_alert(self.store.redis, "slack")
        log.warning(
            "alert sent to Slack dlq_id=%s saga_id=%s step=%s",
            eid,
            entry["saga_id"],
            entry["name"],
        )
        return "alerted on Slack"

    def check_outages(self) -> list[str]:
        """One alert when a dependency has been unreachable for `outage_alert` seconds, and
        one when it answers again (work reached it, or nothing has failed on it for a
        while). Returns what it said."""
        said, now, board = [], self.store.clock(), self.runner.outages
        for dependency, row in board.rows().items():
            over = row.get("over") or now - row["last_seen"] > self.outage_quiet
            if over and not row.get("alerted"):
                board.forget(dependency)  # short: nobody was paged, nobody needs the news
            elif over:
                if self._page(recovered_text(dependency, row), f"{dependency} is back"):
                    board.forget(dependency)
                    said.append(f"{dependency} back")
            elif not row.get("alerted") and now - row["since"] >= self.outage_alert:
                text = outage_text(dependency, row, self.outage_budget, now)
                if self._page(text, dependency):
                    board.update(dependency, alerted=True)
                    said.append(f"{dependency} unreachable")
        return said

    def _page(self, text: str, what: str) -> bool:
        """Send one alert that belongs to no entry; False when Slack failed (try later)."""
        if not self.alerter.configured:
            log.error("ALERT (Slack not configured): %s\n%s", what, text)
            count_alert(self.store.redis, "log")
            return True
        try:
            self.alerter.send(text)
        except AlertFailed as exc:
            log.error("ALERT (Slack failed: %s; will retry): %s\n%s", exc, what, text)
            return False
        count_alert(self.store.redis, "slack")
        log.warning("alert sent to Slack: %s", what)
        return True

    def expire_resolved(self) -> int:
        gone = self.store.expire_resolved(self.retention)
        if gone:
            log.info("deleted %s DLQ entries resolved over %.0fs ago", gone, self.retention)
        return gone

    def run_once(self) -> bool:
        entry = self.store.claim(self.lease)
        if entry is None:
            return False
        if entry is False:
            return True  # it needed nothing more; look for the next
        try:
            self.handle(entry)
        except Exception as exc:
            # An error must not kill the loop; the lease makes the entry due again. Redis
            # gone is an outage: run() says it once.
            if unreachable(exc):
                raise
            log.exception("DLQ worker failed on dlq_id=%s", entry["id"])
        return True

    def run(self, stop: threading.Event) -> None:
        log.info("DLQ worker started: max_attempts=%s", self.max_attempts)
        outage = OutageReporter(log)  # Redis down: said once when it starts and ends
        redis_down = RedisOutagePage(self)
        next_outage_check = next_expiry = 0.0
        while not stop.is_set():
            try:
                if time.monotonic() >= next_outage_check:
                    # Outages change slowly: a look every few seconds is enough.
                    next_outage_check = time.monotonic() + OUTAGE_CHECK_SECONDS
                    self.check_outages()
                if time.monotonic() >= next_expiry:
                    # History is bounded: resolved entries go after their retention.
                    next_expiry = time.monotonic() + EXPIRY_CHECK_SECONDS
                    self.expire_resolved()
                busy = self.run_once()
                outage.ok()
                redis_down.ok()
            except Exception as exc:
                if outage.failed(exc) and unreachable(exc) == "Redis":
                    redis_down.failed(exc)
                busy = False
            if not busy:
                stop.wait(self.poll)
        log.info("DLQ worker stopped")


class RedisOutagePage:
    """Redis itself cannot be reached: nobody can write the outage board, and the DLQ
    worker cannot read it, so its own loop pages once when Redis has been gone for the
    outage alert time, and once when it is back (Slack needs no Redis)."""

    def __init__(self, worker: DeadLetterWorker, clock: Callable[[], float] = time.time) -> None:
        self.worker, self.clock = worker, clock
        self.row: dict[str, Any] | None = None

    def failed(self, exc: BaseException) -> None:
        now = self.clock()
        if self.row is None:
            self.row = {"since": now, "failures": 0, "alerted": False}
        self.row.update(last_seen=now, failures=self.row["failures"] + 1, error=cause(exc))
        if not self.row["alerted"] and now - self.row["since"] >= self.worker.outage_alert:
            text = outage_text("Redis", self.row, self.worker.outage_budget, now)
            self.row["alerted"] = self.worker._page(text, "Redis")

    def ok(self) -> None:
        if self.row is not None:
            if self.row["alerted"]:
                self.row["over"] = self.clock()
                self.worker._page(recovered_text("Redis", self.row), "Redis is back")
            self.row = None
