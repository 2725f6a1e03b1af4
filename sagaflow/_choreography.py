"""Choreography: the same workflow with no conductor. Each service, when its part is done,
announces it, and the service that cares about that event does its own part next.

    create_order ──OrderCreated──▶ decrease_stock ──StockDecreased──▶ use_balance ──▶ ...
    use_balance refused ──BalanceRefused──▶ refund_balance (void) ──BalanceRefunded──▶
        restore_stock ──StockRestored──▶ cancel_order

Who reacts to what is read from the workflow's one list (`reaction`), so both modes run
the same declaration. What differs from orchestration is only how the next piece of work
is sent: not as a chain sent up front, but as an event that the service which just did its
part writes to its own outbox **in the same transaction as its change** (the ledger calls
`announce` from inside it). A change and its event cannot disagree: a crash after the
commit leaves the event in the outbox, and the relay sends it.

Everything else is shared: each piece of work still runs as its Celery task with its
link_error callback and its retry policy, so the five failure classes, the DLQ, the saga
log, the stall check and the operator's actions are the same code in both modes. A failure
event is sent by that callback (a refused step rolled its transaction back: there is no
change for it to be atomic with), which retries until the broker takes it.

Duplicates and reordering:
- the relay may send a row twice (a crash between send and mark): the message id is
  deduplicated by the consumer (SagaTask);
- a redelivered step re-announces its event (its first run's event may be lost with
  it): the next step runs again as a no-op (its ledger row) and announces again;
- an event that arrives after its saga turned back finds the fence and refuses;
- a step's event is written before the step knows what context it passes on; the row is
  held by its writer, which fills the context in and sends it. Should the writer die
  first, the held row expires and the relay sends it unfinished: its consumer asks the
  step again (a no-op that announces the finished event).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from sagaflow._outbox import Outbox, Relay, enqueue
from sagaflow._workflow import Workflow, plan_of

if TYPE_CHECKING:
    from sagaflow._runner import Runner

log = logging.getLogger("sagaflow.choreography")

ORCHESTRATION, CHOREOGRAPHY = "orchestration", "choreography"
MODES = (ORCHESTRATION, CHOREOGRAPHY)
EVENT = "event"  # the outbox message kind of an announcement


@dataclass
class Announcement:
    """What the work running now will announce when its transaction commits."""

    outbox: Outbox
    key: str
    payload: dict[str, Any]
    row_id: int | None = None

    def write(self, session: Session) -> int:
        self.row_id = enqueue(
            session, self.outbox.table, self.key, EVENT, self.payload, held_by=self.outbox
        )
        return self.row_id


_current: ContextVar[Announcement | None] = ContextVar("sagaflow_announcement", default=None)


def announce(session: Session) -> None:
    """Called by the ledger inside the transaction that applied or undid a piece of work:
    its event is written with it. Outside choreography there is nothing to announce."""
    pending = _current.get()
    if pending is not None and pending.row_id is None:
        pending.write(session)


def rolled_back() -> None:
    """The ledger's transaction did not commit: what it wrote is gone."""
    pending = _current.get()
    if pending is not None:
        pending.row_id = None


def reaction(wf: Workflow, payload: dict[str, Any]) -> tuple[str, str] | None:
    """Who reacts to an announcement: ("step", name), ("compensation", name), ("ask", the
    step again: its event was never finished) or None (the saga's last word)."""
    after = payload["after"]
    if after in wf.step_names:
        if not payload.get("final"):
            return "ask", after
        rest = wf.steps_after(after)
        return ("step", rest[0]) if rest else None
    rest = wf.compensations_after(after, payload.get("plan") or [])
    return ("compensation", rest[0]) if rest else None


def react(runner: Runner, payload: dict[str, Any], message_id: str) -> None:
    """Send the piece of work an announcement calls for (the relay's sender), by the plan
    of the version the saga started on, which the announcement carries (none: written
    before versions were carried, the current plan). A version this process does not know
    raises UnknownVersion: the relay keeps the row and tries again, then parks it."""
    wf = plan_of(runner.workflows, payload["workflow"], payload.get("version"))
    found = reaction(wf, payload)
    log.info("event %s of %s (%s) -> %s", payload["event"], payload["saga_id"], message_id, found)
    if found is None:
        return
    what, name = found
    if what == "compensation":
        plan = payload["plan"]
        runner.dispatcher.compensate(
            wf, payload["saga_id"], plan, plan.index(name), message_id=message_id
        )
    elif what == "ask":
        # Its own id: the step's finished event goes out under this row's id, which the
        # next step must not take for one it already had.
        runner.dispatcher.forward(wf, payload["ctx"], [name], message_id=f"{message_id}-ask")
    else:
        runner.dispatcher.forward(wf, payload["ctx"], [name], message_id=message_id)


class Announcer:
    """Orchestration's announcer: the chain carries the next piece of work, so there is
    nothing to announce. The Runner calls the same four methods in both modes."""

    announces = False

    @contextmanager
    def step(
        self, wf: Workflow, name: str, saga_id: str, ctx: dict[str, Any]
    ) -> Iterator[Announcement | None]:
        yield None

    @contextmanager
    def compensation(
        self, wf: Workflow, name: str, saga_id: str, plan: list[str]
    ) -> Iterator[Announcement | None]:
        yield None

    def send(self, announcement: Announcement | None, **finished: Any) -> None:
        pass

    def withdraw(self, announcement: Announcement | None, why: str) -> None:
        pass


CHAINED = Announcer()


class Choreography(Announcer):
    """The runner's part in choreography: an announcement around each piece of work, and
    sending it once the work is done."""

    announces = True

    def __init__(self, outboxes: dict[str, Outbox], relay: Relay) -> None:
        self.outboxes, self.relay = outboxes, relay

    def _outbox(self, service: str) -> Outbox:
        try:
            return self.outboxes[service]
        except KeyError:
            raise RuntimeError(
                f"choreography needs the {service} service's outbox in this process"
            ) from None

    @contextmanager
    def step(
        self, wf: Workflow, name: str, saga_id: str, ctx: dict[str, Any]
    ) -> Iterator[Announcement | None]:
        """Around a forward step: its event (None for the last step: nobody listens)."""
        if not wf.steps_after(name):
            yield None
            return
        payload = {
            "workflow": wf.name,
            "version": wf.version,  # who reacts is read from the saga's own plan
            "saga_id": saga_id,
            "event": wf.event_of(name),
            "after": name,
            "ctx": ctx,
            "final": False,  # finished by `send` with what the step passes on
        }
        with self._announcing(Announcement(self._outbox(wf.queue_of(name)), saga_id, payload)) as a:
            yield a

    @contextmanager
    def compensation(
        self, wf: Workflow, name: str, saga_id: str, plan: list[str]
    ) -> Iterator[Announcement | None]:
        if not wf.compensations_after(name, plan):
            yield None
            return
        payload = {
            "workflow": wf.name,
            "version": wf.version,
            "saga_id": saga_id,
            "event": wf.event_of(name),
            "after": name,
            "plan": list(plan),
            "final": True,
        }
        with self._announcing(Announcement(self._outbox(wf.queue_of(name)), saga_id, payload)) as a:
            yield a

    @contextmanager
    def _announcing(self, announcement: Announcement) -> Iterator[Announcement]:
        token = _current.set(announcement)
        try:
            yield announcement
        finally:
            _current.reset(token)

    def send(self, announcement: Announcement | None, **finished: Any) -> None:
        """The work is done: send its event now (the relay would, later). Work whose
        transaction wrote no event ran before (a redelivery: it finishes the event its
        first run wrote, if that is still unsent) or was skipped (it writes one now: there
        is no change for it to be atomic with)."""
        if announcement is None:
            return
        outbox = announcement.outbox
        payload = {**announcement.payload, **finished, "final": True}
        if announcement.row_id is None:
            announcement.row_id = self._earlier(announcement, payload)
        row_id = announcement.row_id
        if row_id is None:
            with outbox.db.write() as session:
                announcement.payload = payload
                row_id = announcement.write(session)
        try:
            # Held by this writer, so no relay takes it meanwhile: no claim to make. (Its
            # saga's earlier messages caused this work: they have left already.)
            self.relay.send_held(outbox, row_id, EVENT, payload)
        except Exception:
            # The row is in the outbox: the relay sends it once the database answers.
            log.exception("could not send %s at once; the relay will", payload["event"])

    def _earlier(self, announcement: Announcement, payload: dict[str, Any]) -> int | None:
        outbox, after = announcement.outbox, payload["after"]
        for row_id, earlier in outbox.unsent(announcement.key, EVENT):
            if earlier.get("after") == after and outbox.take_over(row_id, payload):
                return row_id
        return None

    def withdraw(self, announcement: Announcement | None, why: str) -> None:
        """The saga turned back while this work applied: what follows must not run."""
        if announcement is not None and announcement.row_id is not None:
            announcement.outbox.withdraw([announcement.row_id], why)
