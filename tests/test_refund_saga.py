"""The shop's second workflow, the refund of a COMPLETED order, on real workers and a real
Redis in both saga modes: started through the same front door as the order (one call in
its route), run, compensated and parked by the same runtime, with nothing in sagaflow
shaped around the order saga."""

from __future__ import annotations

import json

import pytest

from app.bootstrap import fault_names
from app.refund_saga import REFUND
from sagaflow._choreography import MODES
from sagaflow._faults import clear_live_faults, set_live_faults
from tests.stack import Stack
from tests.support import wait_for


@pytest.fixture(scope="module", params=MODES)
def stack(request, primary_backend, tmp_path_factory):
    workdir = tmp_path_factory.mktemp(f"refund-{request.param}")
    stack = Stack(primary_backend, workdir, SAGA_MODE=request.param).start()
    try:
        stack.worker(SAGA_FAULTS_ENABLED="1")
        yield stack
    finally:
        stack.stop()


def _completed_order(shop, coupon: bool = True):
    user = shop.new_user(balance=1_000)
    product = shop.product(stock=10, price=150)
    issued = shop.coupon_for(user, discount=50) if coupon else None
    order_id = shop.order(user, product, quantity=2, issued_coupon_id=issued)
    order = shop.wait_order(order_id)
    assert order["status"] == "COMPLETED", order
    assert (shop.stock(product), shop.balance(user)) == (8, 750 if coupon else 700)
    return user, product, issued, order_id


def test_a_refund_gives_back_the_money_the_stock_and_the_coupon_once(stack):
    shop = stack.shop
    user, product, coupon, order_id = _completed_order(shop)

    answer, headers = shop.refund(order_id, user)
    assert answer["status"] == "REFUNDING"
    assert answer["refund"]["saga_id"] == REFUND.saga_id_for(order_id)
    order = shop.wait_refund(order_id)

    assert order["status"] == "REFUNDED"
    assert order["refund"]["status"] == "COMPLETED"
    steps = {s["name"]: s for s in order["refund"]["steps"]}
    assert [s["name"] for s in order["refund"]["steps"]][:5] == REFUND.step_names
    assert all(steps[name]["status"] == "succeeded" for name in REFUND.step_names), steps
    assert shop.stock(product) == 10
    assert shop.balance(user) == 1_000
    assert shop.issued_coupon(coupon)["status"] == "UNUSED"
    assert order["payment"] == {"amount": 250, "status": "REFUNDED"}
    assert stack.rt.dataplatform.refunds(order_id) == 1
    # The order saga's own record stands: it was published once, as a completed order.
    assert shop.published(order_id) == 1

    # Asking again changes nothing and starts nothing.
    before = shop.snapshot()
    again, headers = shop.refund(order_id, user)
    assert (again["status"], headers.get("Idempotent-Replayed")) == ("REFUNDED", "true")
    assert shop.snapshot() == before


def test_a_refund_refused_at_its_pivot_undoes_what_it_returned(stack):
    shop = stack.shop
    user, product, coupon, order_id = _completed_order(shop)
    set_live_faults(stack.rt.redis, "refund_payment:business", fault_names())
    try:
        shop.refund(order_id, user)
        order = shop.wait_refund(order_id)
    finally:
        clear_live_faults(stack.rt.redis)

    assert order["refund"]["status"] == "FAILED"
    assert order["refund"]["failed_step"] == "refund_payment"
    # The order is as it was before the refund was asked for.
    assert order["status"] == "COMPLETED"
    steps = {s["name"]: s["status"] for s in order["refund"]["steps"]}
    assert steps["take_back_stock"] == steps["reuse_coupon"] == "succeeded", steps
    assert steps["mark_refunded"] == steps["publish_refund"] == "not_run", steps
    assert (shop.stock(product), shop.balance(user)) == (8, 750)
    assert shop.issued_coupon(coupon)["status"] == "USED"
    assert stack.rt.dataplatform.refunds(order_id) == 0
    # One refund per order: a second request is refused with a reason, and changes nothing.
    before = shop.snapshot()
    refused, _ = shop.refund(order_id, user, status=409)
    assert refused["error"]["code"] == "conflict"
    assert "already tried" in refused["error"]["message"]
    assert shop.snapshot() == before


def test_a_refund_compensation_that_cannot_apply_waits_in_the_dlq_for_a_human(stack):
    """The refund returned the stock, then its pivot timed out until it was parked; while
    it waited, the stock was sold again. The operator gives up the refund (the CLI):
    taking the stock back would make it negative, so that compensation is parked in the
    DLQ for a human, never forced."""
    shop = stack.shop
    user, product, _, order_id = _completed_order(shop, coupon=False)
    saga_id = REFUND.saga_id_for(order_id)
    set_live_faults(stack.rt.redis, "refund_payment:timeout", fault_names())
    try:
        shop.refund(order_id, user)
        wait_for(lambda: stack.rt.dead_letters.get(f"{saga_id}:refund_payment"), 60, what="parked")
    finally:
        clear_live_faults(stack.rt.redis)
    assert shop.stock(product) == 10  # returned
    buyer = shop.new_user(balance=10_000)
    assert shop.wait_order(shop.order(buyer, product, quantity=10))["status"] == "COMPLETED"

    given_up = stack.cli("compensate", f"{saga_id}:refund_payment", "--force", "--json")
    assert given_up.returncode == 0, given_up.stderr
    assert json.loads(given_up.stdout)["compensations"] == [
        "reclaim_payment",
        "reuse_coupon",
        "take_back_stock",
    ]
    entry = wait_for(
        lambda: stack.rt.dead_letters.get(f"{saga_id}:take_back_stock"), 60, what="take back"
    )
    assert entry["kind"] == "compensation"
    assert "fewer than 2 left" in entry["error"], entry
    assert shop.stock(product) == 0  # never negative
    assert shop.get_order(order_id)["status"] == "REFUNDING"  # neither refunded nor back
    assert shop.balance(user) == 700  # the refund's money never went out

    # The console shows it with no change made for refunds: the order's page has both
    # sagas and the parked compensation; the DLQ page links the entry to its order.
    console = stack.app.test_client()
    token = stack.credentials.operator["Authorization"].removeprefix("Bearer ")
    signed_in = console.post("/console/login", data={"token": token, "next": "/console/"})
    assert signed_in.status_code == 303, signed_in.get_data(as_text=True)
    page = console.get(f"/console/orders/{order_id}")
    assert page.status_code == 200, page.get_data(as_text=True)
    html = page.get_data(as_text=True)
    assert 'id="timeline-refund"' in html and f"{saga_id}:take_back_stock" in html
    listing = console.get("/console/dlq").get_data(as_text=True)
    assert f'<a href="/console/orders/{order_id}">{saga_id}:take_back_stock</a>' in listing
    found = console.get(f"/console/?q={saga_id}")
    assert found.status_code == 200 and f"/console/orders/{order_id}" in found.get_data(True)


def test_only_the_customer_may_refund_and_only_a_completed_order(stack):
    shop = stack.shop
    user, product, _, order_id = _completed_order(shop, coupon=False)
    other = shop.new_user()
    before = shop.snapshot()

    hidden, _ = shop.refund(order_id, other, status=404)
    assert hidden["error"]["code"] == "not_found"
    staff = shop.client.post(f"/orders/{order_id}/refund", headers=shop.credentials.admin)
    assert staff.status_code == 403, staff.get_data(as_text=True)
    assert shop.snapshot() == before

    poor = shop.new_user(balance=10)
    failed = shop.wait_order(shop.order(poor, product))
    assert failed["status"] == "FAILED"
    before = shop.snapshot()
    refused, _ = shop.refund(failed["order_id"], poor, status=409)
    assert "only a COMPLETED order" in refused["error"]["message"]
    assert shop.snapshot() == before
