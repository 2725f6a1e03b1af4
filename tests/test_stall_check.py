"""The stall check's rules, in-process on a real SQLite database (no broker, no worker):
every piece of owed work, forward or backward, before or after the order completed, is
found once it has made no progress for the stall time, and nothing else is."""

from __future__ import annotations

import time

import pytest
from alembic import command

from app.db import Database
from app.saga.log import SagaLog
from app.saga.orchestrator import Saga
from app.schema import alembic_config
from app.services.orders import OrderService

IDLE = 300.0


@pytest.fixture
def orders_db(tmp_path):
    url = f"sqlite:///{tmp_path / 'orders.db'}"
    command.upgrade(alembic_config("orders", url), "head")
    db = Database(url)
    yield db
    db.dispose()


@pytest.fixture
def log(orders_db) -> SagaLog:
    return SagaLog(orders_db)


@pytest.fixture
def place(orders_db):
    service = OrderService(orders_db)

    def place() -> int:
        order, _ = service.place(7, [{"product_id": 1, "quantity": 1}], None, None, Saga.plan())
        return order["order_id"]

    return place


def later() -> float:
    """A moment one stall period from now."""
    return time.time() + IDLE + 1


def succeed(log: SagaLog, order_id: int, *names: str) -> None:
    for name in names:
        log.started(order_id, name, "step")
        log.succeeded(order_id, name, "done", completes_order=name == "use_coupon")


def test_a_new_order_whose_first_message_was_lost_is_found(log, place):
    order_id = place()
    assert log.stalled(IDLE, now=later()) == [(order_id, "create_order", "pending")]


def test_work_that_moved_recently_is_not_stalled(log, place):
    order_id = place()
    succeed(log, order_id, "create_order")
    assert log.stalled(IDLE) == []
    assert log.stalled(IDLE, now=later()) == [(order_id, "decrease_stock", "pending")]


def test_a_step_held_by_a_killed_worker_is_found_while_running(log, place):
    order_id = place()
    succeed(log, order_id, "create_order")
    log.started(order_id, "decrease_stock", "step")
    assert log.stalled(IDLE, now=later()) == [(order_id, "decrease_stock", "running")]


def test_a_step_waiting_for_its_retry_counts_as_progress(log, place, orders_db):
    order_id = place()
    log.started(order_id, "create_order", "step")
    log.attempt_failed(order_id, "create_order", "timeout")
    # Its first start was long ago, but the retry was scheduled just now.
    found = log.stalled(IDLE, now=time.time() + 1)
    assert found == []
    assert log.stalled(IDLE, now=later()) == [(order_id, "create_order", "retrying")]


def test_a_completed_order_whose_publication_was_lost_is_found(log, place):
    order_id = place()
    succeed(log, order_id, "create_order", "decrease_stock", "use_balance", "use_coupon")
    assert log.order_status(order_id) == "COMPLETED"
    assert log.stalled(IDLE, now=later()) == [(order_id, "publish_order", "pending")]

    succeed(log, order_id, "publish_order")
    assert log.stalled(IDLE, now=later()) == []


def test_a_compensation_whose_message_was_lost_is_found_newest_first(log, place):
    order_id = place()
    succeed(log, order_id, "create_order", "decrease_stock")
    log.started(order_id, "use_balance", "step")
    log.failed(order_id, "use_balance", "InsufficientBalance: too little")
    assert log.begin_compensation(order_id, "use_balance", "too little", False) == [
        "restore_stock",
        "cancel_order",
    ]
    assert log.stalled(IDLE, now=later()) == [(order_id, "restore_stock", "pending")]


def test_steps_the_saga_turned_back_before_reaching_are_not_run_not_pending(log, place):
    order_id = place()
    succeed(log, order_id, "create_order")
    log.started(order_id, "decrease_stock", "step")
    log.failed(order_id, "decrease_stock", "OutOfStock: none left")
    log.begin_compensation(order_id, "decrease_stock", "none left", False)
    statuses = log.statuses(order_id)
    assert [statuses[n] for n in ("use_balance", "use_coupon", "publish_order")] == ["not_run"] * 3


def test_a_compensation_owed_after_the_order_failed_is_found(log, place):
    order_id = place()
    succeed(log, order_id, "create_order")
    log.started(order_id, "decrease_stock", "step")
    log.failed(order_id, "decrease_stock", "OutOfStock: none left")
    log.begin_compensation(order_id, "decrease_stock", "none left", False)
    log.started(order_id, "cancel_order", "compensation")
    log.succeeded(order_id, "cancel_order", "order cancelled")
    assert log.stalled(IDLE, now=later()) == []
    # A step that applied in a race with the failure is undone: that undo is owed too.
    log.owe_compensation(order_id, "restore_stock")
    assert log.stalled(IDLE, now=later()) == [(order_id, "restore_stock", "pending")]


def test_a_failure_whose_callback_was_lost_is_found_as_failed(log, place):
    order_id = place()
    succeed(log, order_id, "create_order")
    log.started(order_id, "decrease_stock", "step")
    log.failed(order_id, "decrease_stock", "OutOfStock: none left")  # no step_failed ran
    assert log.stalled(IDLE, now=later()) == [(order_id, "decrease_stock", "failed")]


def test_work_already_in_the_dlq_or_waiting_for_a_human_is_left_to_it(log, place):
    parked = place()
    succeed(log, parked, "create_order", "decrease_stock", "use_balance", "use_coupon")
    log.dead_lettered(parked, "publish_order", "stalled", keep_order_status=True)
    stuck = place()
    log.dead_lettered(stuck, "create_order", "timeout", keep_order_status=False)
    assert log.order_status(stuck) == "NEEDS_ATTENTION"
    assert log.stalled(IDLE, now=later()) == []
