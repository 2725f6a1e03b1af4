"""Every step and compensation is idempotent, keyed by (saga id, step): a message
delivered twice changes nothing the second time, and a compensation that arrives before
its step makes the late step refuse to apply."""

from __future__ import annotations

import time

import pytest

from app.order_context import saga_id_of
from app.order_saga import ORDER
from sagaflow import AlreadyCompensated
from tests.support import wait_for

pytestmark = pytest.mark.usefixtures("worker")


def _deliver_again(flask_app, rt, args: tuple, order_id: int, name: str, times: int):
    """Send the task by hand, `times` times, and wait until the worker ran each."""
    before = rt.saga_log.step(order_id, name)["attempts"]
    celery = flask_app.extensions["celery"]
    for _ in range(times):
        celery.send_task(f"order.{name}", args=args, queue=ORDER.queue_of(name))
    wait_for(
        lambda: (
            (s := rt.saga_log.step(order_id, name))["attempts"] == before + times
            and s["status"] in ("succeeded", "skipped", "refused")
        ),
        30,
        what=f"{name} to run {times} more times",
    )


def test_every_step_delivered_twice_changes_nothing(shop, flask_app, rt):
    user = shop.new_user(balance=1_000)
    product = shop.product(stock=10, price=100)
    coupon = shop.coupon_for(user, discount=20)
    order_id = shop.order(user, product, quantity=2, issued_coupon_id=coupon)
    shop.wait_order(order_id)
    wait_for(lambda: shop.published(order_id) == 1, 10, what="publication")
    assert shop.wait_streamed(order_id) == 1
    stream_before = rt.redis.xlen("dataplatform.orders")
    ctx = rt.saga_log.context(order_id)

    for name in ("create_order", "decrease_stock", "use_balance", "use_coupon", "publish_order"):
        _deliver_again(flask_app, rt, (ctx,), order_id, name, times=2)

    assert shop.stock(product) == 8
    assert shop.balance(user) == 1_000 - 180
    held = shop.issued_coupon(coupon)
    assert (held["status"], held["order_id"]) == ("USED", order_id)
    assert shop.published(order_id) == 1
    time.sleep(1)  # what the relay would send, it has by now
    assert rt.redis.xlen("dataplatform.orders") == stream_before
    assert shop.get_order(order_id)["status"] == "COMPLETED"


def test_every_compensation_delivered_twice_undoes_once(shop, flask_app, rt):
    user = shop.new_user(balance=1_000)
    product = shop.product(stock=10, price=100)
    coupon = shop.coupon_for(user, discount=10)
    shop.wait_order(shop.order(user, product, issued_coupon_id=coupon))  # uses the coupon
    failed = shop.wait_order(shop.order(user, product, quantity=3, issued_coupon_id=coupon))
    assert failed["status"] == "FAILED"
    order_id = failed["order_id"]

    for name in ("refund_balance", "restore_stock", "cancel_order"):
        _deliver_again(flask_app, rt, (saga_id_of(order_id),), order_id, name, 2)

    assert shop.stock(product) == 9  # only the first, completed order holds stock
    assert shop.balance(user) == 1_000 - 90
    assert shop.get_order(order_id)["status"] == "FAILED"


def test_compensation_before_its_step_voids_the_late_step(rt, shop):
    product = shop.product(stock=10, price=100)
    user = shop.new_user(balance=500)
    saga_id = saga_id_of(900_001)  # an order whose step never ran here

    assert "never applied" in rt.products.restore_stock(saga_id)
    assert "never applied" in rt.balances.refund_balance(saga_id)
    with pytest.raises(AlreadyCompensated):
        rt.products.decrease_stock(saga_id, [{"product_id": product, "quantity": 4}])
    with pytest.raises(AlreadyCompensated):
        rt.balances.use_balance(saga_id, user, 300)

    assert shop.stock(product) == 10
    assert shop.balance(user) == 500
    assert "already voided" in rt.products.restore_stock(saga_id)


def test_step_that_failed_does_not_apply_when_redelivered_after_the_order_failed(
    shop, flask_app, rt
):
    user = shop.new_user(balance=50)
    product = shop.product(stock=5, price=100)
    order = shop.wait_order(shop.order(user, product))
    assert order["failed_step"] == "use_balance"
    order_id = order["order_id"]
    ctx = rt.saga_log.context(order_id)
    shop.charge(user, 1_000)

    # The same use_balance message arrives again, now that it would succeed.
    _deliver_again(flask_app, rt, (ctx,), order_id, "use_balance", 1)

    assert shop.balance(user) == 1_050
    assert rt.saga_log.step(order_id, "use_balance")["status"] == "refused"
    assert shop.get_order(order_id)["status"] == "FAILED"
    shop.check_invariants([order_id], product, 5, user, 1_050)
