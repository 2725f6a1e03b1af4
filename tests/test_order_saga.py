"""The forward saga on a real worker and a real Redis: what a completed or refused order
changes, and that nothing changes twice."""

from __future__ import annotations

import pytest

from app.order_saga import ORDER

pytestmark = pytest.mark.usefixtures("worker")


def test_completed_order_changes_stock_balance_coupon_and_data_platform_exactly_once(shop):
    user = shop.new_user(balance=1_000)
    product = shop.product(stock=10, price=150)
    coupon = shop.coupon_for(user, discount=50)

    order_id = shop.order(user, product, quantity=2, issued_coupon_id=coupon)
    order = shop.wait_order(order_id)

    assert order["status"] == "COMPLETED"
    assert (order["total"], order["discount"], order["paid"]) == (300, 50, 250)
    assert shop.stock(product) == 8
    assert shop.balance(user) == 750
    assert shop.issued_coupon(coupon)["status"] == "USED"
    shop.wait_order(order_id, timeout=10)
    # Every step the declaration lists ran, in its order (read from ORDER, not spelled
    # here: a step added to the workflow is expected here too).
    assert [s["name"] for s in order["steps"]] == ORDER.step_names
    final = shop.get_order(order_id)
    assert all(s["status"] == "succeeded" and s["attempts"] == 1 for s in final["steps"])
    assert shop.published(order_id) == 1
    assert order["payment"] == {"amount": 250, "status": "PAID"}
    shop.check_invariants([order_id], product, 10, user, 1_000, coupon)


def test_completed_order_is_streamed_to_the_data_platform(shop, rt):
    user = shop.new_user(balance=500)
    product = shop.product(stock=3, price=100)
    order_id = shop.order(user, product)
    shop.wait_order(order_id)
    assert shop.wait_streamed(order_id) == 1
    [entry] = [e for _, e in rt.redis.xrange("dataplatform.orders")
               if e[b"order_id"] == str(order_id).encode()]  # fmt: skip
    assert entry[b"message_id"].startswith(b"outbox-dataplatform-")


@pytest.mark.parametrize(
    ("stock", "balance", "quantity", "failed_step", "reason"),
    [
        (1, 1_000, 2, "decrease_stock", "OutOfStock"),
        (5, 50, 1, "use_balance", "InsufficientBalance"),
    ],
)
def test_business_error_fails_the_order_and_charges_nothing(
    shop, stock, balance, quantity, failed_step, reason
):
    user = shop.new_user(balance=balance)
    product = shop.product(stock=stock, price=100)

    order = shop.wait_order(shop.order(user, product, quantity=quantity))

    assert order["status"] == "FAILED"
    assert order["failed_step"] == failed_step
    assert reason in order["failure_reason"]
    assert shop.stock(product) == stock
    assert shop.balance(user) == balance
    assert order["payment"] is None
    assert order["paid"] is None  # refused: nothing shows as paid
    steps = {s["name"]: s for s in order["steps"]}
    assert steps[failed_step]["status"] == "failed"
    assert steps["cancel_order"]["status"] == "succeeded"
    # The steps it never reached say so; they are not left "pending" for ever.
    never = ORDER.steps_after(failed_step)
    assert [steps[name]["status"] for name in never] == ["not_run"] * len(never)
    shop.check_invariants([order["order_id"]], product, stock, user, balance)


def test_used_coupon_fails_the_order_and_undoes_balance_and_stock_newest_first(shop):
    user = shop.new_user(balance=1_000)
    product = shop.product(stock=5, price=100)
    coupon = shop.coupon_for(user, discount=10)
    first = shop.wait_order(shop.order(user, product, issued_coupon_id=coupon))
    assert first["status"] == "COMPLETED"

    second = shop.wait_order(shop.order(user, product, issued_coupon_id=coupon))

    assert second["status"] == "FAILED"
    assert second["failed_step"] == "use_coupon"
    compensations = [s for s in second["steps"] if s["kind"] == "compensation"]
    # Newest first, starting with the failed step's own undo, which voids it so that a
    # late delivery of it can never apply.
    assert [c["name"] for c in compensations] == [
        "restore_coupon",
        "refund_balance",
        "restore_stock",
        "cancel_order",
    ]
    assert all(c["status"] == "succeeded" for c in compensations)
    assert compensations[0]["detail"] == "nothing to undo: step never applied (voided)"
    assert [c["detail"] for c in compensations[1:3]] == ["undone", "undone"]
    order_ids = [first["order_id"], second["order_id"]]
    shop.check_invariants(order_ids, product, 5, user, 1_000, coupon)


def test_same_idempotency_key_runs_one_saga(shop, client):
    user = shop.new_user(balance=1_000)
    product = shop.product(stock=10, price=100)

    first = shop.order(user, product, quantity=3, key="checkout-42")
    replay = client.post(
        "/orders",
        headers={"Idempotency-Key": "checkout-42", **shop.credentials.customer(user)},
        json={"user_id": user, "items": [{"product_id": product, "quantity": 3}]},
    )

    assert replay.status_code == 202
    assert replay.get_json()["order_id"] == first
    assert replay.headers["Idempotent-Replayed"] == "true"
    shop.wait_order(first)
    assert shop.stock(product) == 7
    assert shop.balance(user) == 700


def test_idempotency_key_reused_for_a_different_order_is_refused(shop, client):
    user = shop.new_user(balance=1_000)
    product = shop.product(stock=10, price=100)
    shop.wait_order(shop.order(user, product, quantity=1, key="basket-7"))
    before = shop.snapshot()

    clash = client.post(
        "/orders",
        headers={"Idempotency-Key": "basket-7", **shop.credentials.customer(user)},
        json={"user_id": user, "items": [{"product_id": product, "quantity": 2}]},
    )

    assert clash.status_code == 409
    assert clash.get_json()["error"]["code"] == "conflict"
    assert shop.snapshot() == before


def test_an_idempotency_key_is_scoped_to_its_user(shop, client):
    product = shop.product(stock=10, price=100)
    first, second = shop.new_user(balance=1_000), shop.new_user(balance=1_000)

    mine = shop.order(first, product, quantity=1, key="cart-1")
    # Another user's identical key is another order: no 409, no replay of the first's.
    theirs = client.post(
        "/orders",
        headers={"Idempotency-Key": "cart-1", **shop.credentials.customer(second)},
        json={"items": [{"product_id": product, "quantity": 2}]},
    )

    assert theirs.status_code == 202, theirs.get_json()
    assert theirs.get_json()["order_id"] != mine
    assert "Idempotent-Replayed" not in theirs.headers
    shop.wait_order(mine)
    shop.wait_order(theirs.get_json()["order_id"])
    assert (shop.balance(first), shop.balance(second)) == (900, 800)
    assert shop.stock(product) == 7


def test_orders_can_be_listed_by_status_for_the_operator(shop, client):
    user = shop.new_user(balance=50)
    product = shop.product(stock=5, price=100)
    failed = shop.wait_order(shop.order(user, product))["order_id"]  # balance too low

    operator = shop.credentials.operator
    listed = shop.ok(client.get("/orders?status=FAILED&limit=500", headers=operator))

    assert failed in [o["order_id"] for o in listed]
    assert {o["status"] for o in listed} == {"FAILED"}
    assert client.get("/orders?status=LOST", headers=operator).status_code == 422
    assert client.get("/orders?limit=0", headers=operator).status_code == 422


def test_a_customer_lists_only_its_own_orders(shop, client):
    product = shop.product(stock=5, price=10)
    me, other = shop.new_user(balance=100), shop.new_user(balance=100)
    mine = shop.order(me, product)
    theirs = shop.order(other, product)

    listed = shop.ok(client.get("/orders?limit=500", headers=shop.credentials.customer(me)))

    assert [o["order_id"] for o in listed] == [mine]
    assert theirs not in [o["order_id"] for o in listed]
