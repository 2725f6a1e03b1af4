"""Bad input gets a 4xx with a JSON error body and changes nothing in any database."""

from __future__ import annotations

import pytest

UNKNOWN = 999_999


def _cases(product, coupon_id):
    order = {"user_id": 1, "items": [{"product_id": product, "quantity": 1}]}
    return [
        ("POST", "/products", "not json", 400),
        ("POST", "/products", [1, 2], 400),
        ("POST", "/products", {"name": "x", "price": 10}, 422),
        ("POST", "/products", {"name": "x", "price": "10", "stock": 1}, 422),
        ("POST", "/products", {"name": "x", "price": 0, "stock": 1}, 422),
        ("POST", "/products", {"name": "x", "price": -5, "stock": 1}, 422),
        ("POST", "/products", {"name": "x", "price": 5, "stock": -1}, 422),
        ("POST", "/products", {"name": "x", "price": 5.5, "stock": 1}, 422),
        ("POST", "/products", {"name": "", "price": 5, "stock": 1}, 422),
        ("POST", "/products", {"name": "x", "price": 5, "stock": 1, "admin": True}, 422),
        ("POST", "/products", {"name": "x" * 70_000, "price": 5, "stock": 1}, 413),
        ("POST", "/balances/7/charge", {"amount": 0}, 422),
        ("POST", "/balances/7/charge", {"amount": -100}, 422),
        ("POST", "/balances/7/charge", {"amount": True}, 422),
        ("POST", "/balances/7/charge", {}, 422),
        ("POST", "/balances/abc/charge", {"amount": 10}, 404),
        ("POST", "/balances/0/charge", {"amount": 10}, 404),
        ("POST", "/balances/99999999999/charge", {"amount": 10}, 404),
        ("GET", f"/balances/{UNKNOWN}", None, 404),
        ("POST", "/coupons", {"name": "c", "discount": 0, "quantity": 1}, 422),
        ("POST", "/coupons", {"name": "c", "discount": 5, "quantity": 0}, 422),
        ("POST", f"/coupons/{UNKNOWN}/issue", {"user_id": 1}, 404),
        ("POST", f"/coupons/{coupon_id}/issue", {"user_id": "1"}, 422),
        ("GET", f"/coupons/requests/{UNKNOWN}", None, 404),
        ("POST", "/orders", {"user_id": 1, "items": []}, 422),
        ("POST", "/orders", {"user_id": 1}, 422),
        ("POST", "/orders", {**order, "user_id": "1"}, 422),
        ("POST", "/orders", {**order, "user_id": -1}, 422),
        ("POST", "/orders", {"user_id": 1, "items": [{"product_id": product, "quantity": 0}]}, 422),
        ("POST", "/orders", {"user_id": 1, "items": [{"product_id": product}]}, 422),
        ("POST", "/orders", {"user_id": 1, "items": [{"product_id": UNKNOWN, "quantity": 1}]}, 404),
        (
            "POST",
            "/orders",
            {
                "user_id": 1,
                "items": [
                    {"product_id": product, "quantity": 1},
                    {"product_id": product, "quantity": 2},
                ],
            },
            422,
        ),
        ("POST", "/orders", {**order, "issued_coupon_id": UNKNOWN}, 404),
        ("POST", "/orders", {**order, "issued_coupon_id": "x"}, 422),
        ("POST", "/orders", "{broken json", 400),
        ("GET", f"/orders/{UNKNOWN}", None, 404),
        ("GET", "/orders/abc", None, 404),
        ("GET", f"/products/{UNKNOWN}", None, 404),
        ("DELETE", "/orders", None, 405),
        ("GET", "/nowhere", None, 404),
    ]


@pytest.fixture(scope="module")
def existing(flask_app):
    client = flask_app.test_client()
    product = client.post("/products", json={"name": "p", "price": 10, "stock": 5}).get_json()
    coupon = client.post("/coupons", json={"name": "c", "discount": 1, "quantity": 1}).get_json()
    return product["id"], coupon["id"]


@pytest.mark.parametrize("index", range(len(_cases(1, 1))))
def test_bad_input_answers_4xx_json_and_changes_nothing(shop, client, existing, index):
    method, path, body, status = _cases(*existing)[index]
    before = shop.snapshot()

    if isinstance(body, str):
        response = client.open(
            path, method=method, data=body, headers={"Content-Type": "application/json"}
        )
    else:
        response = client.open(path, method=method, json=body)

    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] and error["message"]
    assert shop.snapshot() == before


def test_oversized_idempotency_key_is_refused(shop, client, existing):
    product, _ = existing
    before = shop.snapshot()
    response = client.post(
        "/orders",
        headers={"Idempotency-Key": "k" * 300},
        json={"user_id": 1, "items": [{"product_id": product, "quantity": 1}]},
    )
    assert response.status_code == 400
    assert "Idempotency-Key" in response.get_json()["error"]["message"]
    assert shop.snapshot() == before


def test_totals_and_balances_beyond_the_32_bit_columns_are_refused(shop, client):
    product = shop.product(stock=10, price=1_000_000_000)
    user = shop.new_user(balance=1_000_000_000)
    shop.ok(shop.client.post(f"/balances/{user}/charge", json={"amount": 1_000_000_000}))
    before = shop.snapshot()

    too_big = client.post(
        "/orders", json={"user_id": user, "items": [{"product_id": product, "quantity": 3}]}
    )
    overflow = client.post(f"/balances/{user}/charge", json={"amount": 200_000_000})

    assert too_big.status_code == 422 and "total" in too_big.get_json()["error"]["message"]
    assert overflow.status_code == 422
    assert shop.snapshot() == before


def test_broker_down_answers_503_changes_nothing_and_the_key_can_be_reused(
    shop, primary_stack, worker
):
    from app import create_app

    product = shop.product(stock=5, price=100)
    user = shop.new_user(balance=1_000)
    body = {"user_id": user, "items": [{"product_id": product, "quantity": 1}]}
    coupon = shop.ok(
        shop.client.post("/coupons", json={"name": "c", "discount": 1, "quantity": 1}), 201
    )
    before = shop.snapshot()
    cut_off = create_app(primary_stack.settings.with_overrides(redis_url="redis://127.0.0.1:9/0"))
    try:
        down = cut_off.test_client().post(
            "/orders", json=body, headers={"Idempotency-Key": "k-503"}
        )
        assert down.status_code == 503
        assert down.get_json()["error"]["code"] == "broker_unavailable"
        assert shop.snapshot() == before

        issue = cut_off.test_client().post(f"/coupons/{coupon['id']}/issue", json={"user_id": user})
        assert issue.status_code == 503
    finally:
        cut_off.extensions["saga"].rt.dispose()
    rejected = shop.client.get(f"/users/{user}/coupons").get_json()
    assert rejected == []  # the request was refused, not left PENDING for ever

    order_id = shop.order(user, product, key="k-503")  # the broker is back: same key works
    assert shop.wait_order(order_id)["status"] == "COMPLETED"
