"""A worker killed with SIGKILL in the middle of a step loses nothing: the unacknowledged
message comes back after the broker's visibility timeout, and the idempotency keys make
the second run safe."""

from __future__ import annotations

import pytest

from sagaflow._choreography import MODES
from tests.stack import Stack
from tests.support import wait_for

# Long enough to kill the worker mid-step; the visibility timeout still exceeds the
# longest retry delay plus the hard limit, as the settings insist.
SLOW_STEP = {"STEP_SOFT_TIME_LIMIT": "5", "STEP_TIME_LIMIT": "8", "BROKER_VISIBILITY_TIMEOUT": "10"}


@pytest.fixture(scope="module", params=MODES)
def stack(request, primary_backend, tmp_path_factory):
    workdir = tmp_path_factory.mktemp(f"crash-{request.param}")
    stack = Stack(primary_backend, workdir, SAGA_MODE=request.param, **SLOW_STEP).start()
    yield stack
    stack.stop()


def test_worker_killed_mid_step_loses_nothing_and_applies_once(stack):
    shop = stack.shop
    # The first stock step hangs (an injected overrun), so the kill lands mid-step.
    first = stack.worker(faults="decrease_stock:timeout:1")
    user = shop.new_user(balance=1_000)
    product = shop.product(stock=10, price=100)
    order_id = shop.order(user, product, quantity=3)
    wait_for(
        lambda: stack.rt.saga_log.step(order_id, "decrease_stock")["status"] == "running",
        20,
        what="decrease_stock to start",
    )

    first.kill()
    assert first.proc.returncode == -9
    second = stack.worker()
    try:
        order = shop.wait_order(order_id, ("COMPLETED",), timeout=60)
    finally:
        second.stop()

    steps = {s["name"]: s for s in order["steps"]}
    assert steps["decrease_stock"]["attempts"] == 2
    assert shop.stock(product) == 7
    assert shop.balance(user) == 700
    shop.check_invariants([order_id], product, 10, user, 1_000)


def test_a_step_that_kills_its_worker_every_time_ends_in_the_dlq_not_in_a_loop(stack):
    """Each loss of the worker counts as a retry (task_retry_on_worker_lost): after the
    step's two retries the third loss parks the order in the DLQ, whose retry, once the
    step stops killing its worker, finishes it. The stock moved once."""
    shop = stack.shop
    losses = 3  # the first attempt and both retries
    worker = stack.worker(faults=f"decrease_stock:crash:{losses}")
    dlq = stack.dlq_worker()
    try:
        user = shop.new_user(balance=1_000)
        product = shop.product(stock=10, price=100)
        order_id = shop.order(user, product, quantity=2)
        order = shop.wait_order(order_id, ("COMPLETED",), timeout=90)
    finally:
        dlq.stop()
        worker.stop()

    steps = {s["name"]: s for s in order["steps"]}
    assert steps["decrease_stock"]["attempts"] == losses + 1, steps["decrease_stock"]
    [entry] = stack.rt.dead_letters.entries(saga_id=f"order-{order_id}")
    assert (entry["name"], entry["status"]) == ("decrease_stock", "resolved"), entry
    assert "its worker lost on every retry" in entry["error"], entry
    assert worker.log().count("WorkerLostError") >= losses, worker.log()[-3000:]
    assert shop.stock(product) == 8
    shop.check_invariants([order_id], product, 10, user, 1_000)
