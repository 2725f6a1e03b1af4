"""The stall check's rules, in-process on a real SQLite database (no broker, no worker):
every piece of owed work, forward or backward, before or after the saga completed, is
found once it has made no progress for the stall time, and nothing else is. The log is
fed the events the workers would send, through the orchestrator's projector."""

from __future__ import annotations

import itertools
import time

import pytest

from app.order_context import OrderContext
from app.order_saga import ORDER
from app.schema import upgrade_service
from app.services.orders import Order
from app.workflows import HOOKS, WORKFLOWS
from sagaflow import Event, Phase, Projector, SagaLog
from sagaflow._db import Database

# The rules layer: in-process, no subprocess (`make test-fast`).
pytestmark = pytest.mark.rules

IDLE = 300.0
_ids = itertools.count(1)


class Log:
    """The order saga's log, and a hand that writes the events workers would send."""

    def __init__(self, db: Database):
        self.db, self.log = db, SagaLog(db, WORKFLOWS)
        self.projector = Projector(db, None, WORKFLOWS, HOOKS)

    def place(self) -> str:
        order_id = next(_ids)
        ctx = OrderContext(order_id=order_id, user_id=7, items=[], total=0, discount=0, paid=0)
        with self.db.write() as session:
            session.add(Order(id=order_id, user_id=7, status="PENDING"))
            session.flush()
            return SagaLog.create(session, ORDER, ctx)

    def event(self, saga_id: str, name: str, phase: Phase, **fields) -> None:
        with self.db.write() as session:
            self.projector.apply(session, Event(saga_id, ORDER.name, name, phase, **fields))

    def succeed(self, saga_id: str, *names: str) -> None:
        ctx = self.log.timeline(saga_id)["context"]
        for name in names:
            self.event(saga_id, name, Phase.STARTED, attempt=1)
            self.event(saga_id, name, Phase.SUCCEEDED, detail="done", ctx=ctx)

    def stalled(self, now: float | None = None) -> list[tuple[str, str, str]]:
        found = self.log.stalled(IDLE, time.time() if now is None else now)
        return [(instance.saga_id, name, status) for instance, name, status in found]


@pytest.fixture
def log(tmp_path) -> Log:
    url = f"sqlite:///{tmp_path / 'orders.db'}"
    upgrade_service("orders", url)
    db = Database(url)
    yield Log(db)
    db.dispose()


def later() -> float:
    """A moment one stall period from now."""
    return time.time() + IDLE + 1


def test_a_new_saga_whose_first_message_was_lost_is_found(log):
    saga = log.place()
    assert log.stalled(later()) == [(saga, "create_order", "pending")]


def test_work_that_moved_recently_is_not_stalled(log):
    saga = log.place()
    log.succeed(saga, "create_order")
    assert log.stalled() == []
    assert log.stalled(later()) == [(saga, "decrease_stock", "pending")]


def test_a_step_held_by_a_killed_worker_is_found_while_running(log):
    saga = log.place()
    log.succeed(saga, "create_order")
    log.event(saga, "decrease_stock", Phase.STARTED, attempt=1)
    assert log.stalled(later()) == [(saga, "decrease_stock", "running")]


def test_a_step_waiting_for_its_retry_counts_as_progress(log):
    saga = log.place()
    log.event(saga, "create_order", Phase.STARTED, attempt=1)
    log.event(saga, "create_order", Phase.RETRYING, error="timeout")
    assert log.stalled(time.time() + 1) == []
    assert log.stalled(later()) == [(saga, "create_order", "retrying")]


# Every step up to and including the pivot, read from the declaration (a step added
# before the pivot is one more here, not a list to edit).
THROUGH_PIVOT = ORDER.step_names[: ORDER.step_names.index(ORDER.pivot) + 1]


def test_a_completed_saga_whose_publication_was_lost_is_found(log):
    saga = log.place()
    log.succeed(saga, *THROUGH_PIVOT)
    assert log.log.status(saga) == "COMPLETED"
    assert ORDER.steps_after(ORDER.pivot) == ["publish_order"]
    assert log.stalled(later()) == [(saga, "publish_order", "pending")]

    log.succeed(saga, "publish_order")
    assert log.stalled(later()) == []


def test_a_compensation_whose_message_was_lost_is_found_newest_first(log):
    saga = log.place()
    log.succeed(saga, "create_order", "decrease_stock")
    log.event(saga, "use_balance", Phase.FAILED, error="InsufficientBalance: too little")
    compensations = ORDER.compensations_for("use_balance")
    log.event(saga, "use_balance", Phase.TURNED_BACK, compensations=compensations)
    assert compensations == ["refund_balance", "restore_stock", "cancel_order"]
    assert log.stalled(later()) == [(saga, "refund_balance", "pending")]


def test_steps_the_saga_turned_back_before_reaching_are_not_run_not_pending(log):
    saga = log.place()
    log.succeed(saga, "create_order")
    log.event(saga, "decrease_stock", Phase.FAILED, error="OutOfStock: none left")
    log.event(saga, "decrease_stock", Phase.TURNED_BACK, compensations=["restore_stock"])
    statuses = log.log.statuses(saga)
    assert [statuses[n] for n in ("use_balance", "use_coupon", "publish_order")] == ["not_run"] * 3


def test_a_compensation_owed_after_the_saga_failed_is_found(log):
    saga = log.place()
    log.event(saga, "create_order", Phase.FAILED, error="refused")
    log.event(saga, "create_order", Phase.TURNED_BACK, compensations=["cancel_order"])
    log.succeed(saga, "cancel_order")
    assert log.log.status(saga) == "FAILED"
    assert log.stalled(later()) == []
    # A step that applied in a race with the turn back is undone: that undo is owed too.
    log.event(saga, "decrease_stock", Phase.TURNED_BACK, compensations=["restore_stock"])
    assert log.stalled(later()) == [(saga, "restore_stock", "pending")]


def test_a_failure_whose_callback_was_lost_is_found_as_failed(log):
    saga = log.place()
    log.succeed(saga, "create_order")
    log.event(saga, "decrease_stock", Phase.FAILED, error="OutOfStock: none left")
    assert log.stalled(later()) == [(saga, "decrease_stock", "failed")]


def test_work_already_in_the_dlq_or_waiting_for_a_human_is_left_to_it(log):
    parked = log.place()
    log.succeed(parked, *THROUGH_PIVOT)
    log.event(parked, "publish_order", Phase.DEAD_LETTERED, error="stalled")
    assert log.log.status(parked) == "COMPLETED"  # after the pivot: parked, still completed
    stuck = log.place()
    log.event(stuck, "create_order", Phase.DEAD_LETTERED, error="timeout")
    assert log.log.status(stuck) == "NEEDS_ATTENTION"
    assert log.stalled(later()) == []
