"""An operator cancels a saga still in flight (issue 19, item 3), on real workers, in both
saga modes: the step it is on is held by the fault injector (`hold`, until the test
releases it), the CLI's dry run says where it turns back and changes nothing, the cancel
fences the saga at that step, and what applied is undone, newest first. Refused, with a
reason, once the saga completed (a refund undoes a completed order) or began turning back.
"""

from __future__ import annotations

import json

import pytest

from app.bootstrap import fault_names
from sagaflow import StepStatus
from sagaflow._choreography import MODES
from sagaflow._faults import clear_live_faults, hold_work, release_work, set_live_faults
from sagaflow.dlq.actions import OperatorActions
from tests.stack import Stack
from tests.support import wait_for


@pytest.fixture(scope="module", params=MODES)
def stack(request, primary_backend, tmp_path_factory):
    workdir = tmp_path_factory.mktemp(f"cancel-{request.param}")
    stack = Stack(primary_backend, workdir, SAGA_MODE=request.param).start()
    try:
        # A held step must not hit its soft limit while the operator acts: 8 s, not 1.
        stack.worker(SAGA_FAULTS_ENABLED="1", STEP_SOFT_TIME_LIMIT="8")
        yield stack
    finally:
        stack.stop()


def test_a_cancelled_saga_turns_back_at_the_step_it_is_on(stack):
    shop, redis = stack.shop, stack.rt.redis
    user = shop.new_user(balance=1_000)
    product = shop.product(stock=10, price=100)
    coupon = shop.coupon_for(user, discount=10)
    set_live_faults(redis, "use_balance:hold", fault_names())
    hold_work(redis)
    try:
        order_id = shop.order(user, product, quantity=3, issued_coupon_id=coupon)
        saga_id = f"order-{order_id}"
        wait_for(
            lambda: (
                (stack.rt.saga_log.step(order_id, "use_balance") or {}).get("status")
                == StepStatus.RUNNING
            ),
            60,
            what="use_balance running, held",
        )
        before = shop.snapshot()
        looked = stack.cli("cancel", saga_id, "--dry-run", "--json")
        assert looked.returncode == 0, looked.stderr
        plan = json.loads(looked.stdout)
        assert (plan["turns_back_at"], plan["dry_run"]) == ("use_balance", True)
        assert plan["compensations"] == ["refund_balance", "restore_stock", "cancel_order"]
        assert shop.snapshot() == before  # the dry run changed nothing

        unsaid = stack.cli("cancel", saga_id)
        assert unsaid.returncode == 2 and "--note" in unsaid.stderr
        done = stack.cli("cancel", saga_id, "--note", "customer called to cancel")
        assert done.returncode == 0, done.stderr
        assert "turning back at use_balance" in done.stdout
    finally:
        release_work(redis)
        clear_live_faults(redis)

    order = shop.wait_order(order_id, ("FAILED",))
    assert order["failed_step"] == "use_balance"
    assert "cancelled by" in order["failure_reason"]
    assert "customer called to cancel" in order["failure_reason"]
    steps = {s["name"]: s["status"] for s in order["steps"]}
    assert steps["use_coupon"] == steps["publish_order"] == "not_run", steps
    for name in ("refund_balance", "restore_stock", "cancel_order"):
        assert steps[name] == "succeeded", steps
    # Whether the held step committed before its undo or was voided first, nothing stays.
    assert (shop.stock(product), shop.balance(user)) == (10, 1_000)
    assert shop.issued_coupon(coupon)["status"] == "UNUSED"
    shop.check_invariants([order_id], product, 10, user, 1_000, coupon)
    history = OperatorActions(None, None, stack.rt.saga_log.log, 0).history(saga_id)
    [action] = [h for h in history if h["action"] == "cancel"]
    assert action["note"] == "customer called to cancel" and action["actor"]

    again = stack.cli("cancel", saga_id, "--note", "twice")
    assert again.returncode == 1 and "already turning back" in again.stderr


def test_a_completed_saga_is_not_cancelled_but_refunded(stack):
    shop = stack.shop
    user = shop.new_user(balance=1_000)
    product = shop.product(stock=10, price=100)
    order = shop.wait_order(shop.order(user, product))
    assert order["status"] == "COMPLETED"
    before = shop.snapshot()
    refused = stack.cli("cancel", order["saga_id"], "--note", "too late")
    assert refused.returncode == 1
    assert "COMPLETED" in refused.stderr and "refund" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    missing = stack.cli("cancel", "order-99999999", "--dry-run")
    assert missing.returncode == 3 and "no saga order-99999999" in missing.stderr
    assert shop.snapshot() == before
