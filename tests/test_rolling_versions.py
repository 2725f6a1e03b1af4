"""A rolling deploy across workflow versions, on real workers (issue 19): a saga started
on the shop's version meets first a worker whose build does not know that version, which
refuses its work (sent back to the queue, no attempt spent, one warning naming the
version), then a worker that knows it, which runs the saga to the end by its own plan."""

from __future__ import annotations

import pytest

from app.order_saga import ORDER
from tests.stack import Stack
from tests.support import WorkerProcess, wait_for


@pytest.fixture(scope="module")
def stack(primary_backend, tmp_path_factory):
    stack = Stack(primary_backend, tmp_path_factory.mktemp("versions")).start()
    yield stack
    stack.stop()


def _later_worker(stack, knows_shop_version: bool) -> WorkerProcess:
    """A worker of a later build (tests/later_build.py) whose current order workflow is the
    shop's plan under another version, keeping the shop's own version or not."""
    build = "renamed-knowing" if knows_shop_version else "renamed"
    return stack.on_later_build(WorkerProcess, build)


def test_a_worker_that_does_not_know_the_version_refuses_and_one_that_does_finishes(stack):
    shop = stack.shop
    user, product = shop.new_user(balance=1_000), shop.product(stock=10, price=100)
    unaware = _later_worker(stack, knows_shop_version=False)
    try:
        order_id = shop.order(user, product, quantity=2)
        refused = f"version {ORDER.version} of workflow order is not known here"
        wait_for(lambda: refused in unaware.log(), 60, what="the unaware worker refusing")
        # Refused, not run: nothing of the saga applied, and no attempt was spent.
        assert stack.rt.saga_log.step(order_id, "create_order")["attempts"] == 0
        assert "this worker knows: v2-test" in unaware.log()
    finally:
        # Replaced, as in a rolling deploy: the message it holds (sent back, waiting for
        # its countdown) goes back to the queue. Which of two workers the broker hands a
        # message to is not ours to decide, so the knowing worker starts after it left.
        unaware.stop()
    aware = _later_worker(stack, knows_shop_version=True)
    try:
        order = shop.wait_order(order_id, ("COMPLETED",), timeout=90)
    finally:
        aware.stop()
    assert order["status"] == "COMPLETED"
    timeline = stack.rt.saga_log.timeline(order_id)
    assert timeline["version"] == ORDER.version
    assert all(s["attempts"] == 1 for s in timeline["steps"]), timeline["steps"]
    assert not stack.rt.dead_letters.entries(saga_id=f"order-{order_id}")
