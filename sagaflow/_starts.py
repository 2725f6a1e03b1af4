"""Starting a saga: the front door an API handler calls.

A saga starts with the business record that asks for it, in one transaction: the record,
the saga's log rows and its start message (a row of the home service's outbox) commit
together or not at all. Right after the commit the handler sends the start itself; if the
broker cannot take it then, the outbox relay does when it can. So a handler does three
things, none of them about outboxes or the log:

    start = starts.start(ORDER)
    order, created = orders.place(..., lambda session, order_id: start.write(session, ctx))
    if created and not start.send():
        ...  # "queued: the order starts when the broker returns"
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from sagaflow import tracing
from sagaflow._errors import DeclarationError, error_text
from sagaflow._faults import NO_FAULTS, FaultInjector
from sagaflow._log import SagaLog
from sagaflow._outbox import Outbox, Relay, enqueue, start_message
from sagaflow._workflow import Workflow

log = logging.getLogger("sagaflow.starts")

# The fault point between a start's commit and its send (SAGA_FAULTS=start_saga:crash).
START_FAULT = "start_saga"


@dataclass
class PendingStart:
    """One saga's start, written in the caller's transaction, sent after its commit."""

    workflow: Workflow
    outbox: Outbox
    relay: Relay
    faults: FaultInjector
    saga_id: str = ""
    _message: tuple[int, str, dict[str, Any]] | None = field(default=None, repr=False)
    _committed: bool = field(default=False, repr=False)

    def write(self, session: Session, ctx: Any) -> str:
        """The saga's log rows and its held start message, in `session`'s transaction;
        returns the saga id. Held: the relays leave the row alone for its lease, and take
        it over if this process dies before it sends."""
        wf = self.workflow
        ctx = wf.parse(ctx)
        # The saga's trace starts here (a child of the request's span, if it is traced): its
        # log row and its start message carry it to whatever runs the saga.
        with tracing.span(f"saga.start {wf.name}", workflow=wf.name, version=wf.version) as span:
            self.saga_id = SagaLog.create(session, wf, ctx, tracing.traceparent())
            if span is not None:
                span.set_attribute("saga.id", self.saga_id)
            kind, payload = start_message(wf.name, ctx.model_dump(mode="json"), wf.version)
            row_id = enqueue(
                session, self.outbox.table, self.saga_id, kind, payload, held_by=self.outbox
            )
        self._message = (row_id, kind, payload)
        # Only a committed start may be sent: a rolled-back one would start a saga for a
        # record that does not exist.
        event.listen(session, "after_commit", self._on_commit, once=True)
        return self.saga_id

    def _on_commit(self, _session: Session) -> None:
        self._committed = True

    def send(self) -> bool:
        """After the commit: send the start now, so a healthy system does not wait for the
        relay's next look. False: the broker cannot be reached; the relay sends it when it
        can."""
        if self._message is None or not self._committed:
            raise RuntimeError(
                f"send() without a committed write(): nothing of {self.workflow.name} started"
            )
        self.faults.after(START_FAULT, self.saga_id)
        row_id, kind, payload = self._message
        try:
            return self.relay.send_held(self.outbox, row_id, kind, payload, changed=False)
        except Exception as exc:  # the outbox's database: the hold expires, a relay sends it
            log.warning(
                "saga start left to the relay saga_id=%s: %s", self.saga_id, error_text(exc)
            )
            return False


class Starts:
    """Starts sagas of the given workflows, each through its home service's outbox."""

    def __init__(
        self, workflows: dict[str, Workflow], relay: Relay, faults: FaultInjector = NO_FAULTS
    ) -> None:
        self.workflows, self.relay, self.faults = workflows, relay, faults
        self._outboxes = {outbox.service: outbox for outbox in relay.outboxes}

    def start(self, workflow: Workflow) -> PendingStart:
        if self.workflows.get(workflow.name) is not workflow:
            raise DeclarationError(f"workflow {workflow.name!r} is not one this process runs")
        outbox = self._outboxes.get(workflow.home)
        if outbox is None:
            raise DeclarationError(
                f"this process does not serve {workflow.home!r}, the home of workflow "
                f"{workflow.name!r}: it cannot start its sagas"
            )
        return PendingStart(workflow, outbox, self.relay, self.faults)
