"""Bad input gets a 4xx with a JSON error body and changes nothing in any database: each
case is sent by a caller who may call the route (so it is the input that is refused, not
the caller), in-process through the Flask app. What only a real server shows (chunked
bodies, slow clients, the role table, the fuzz) is in test_api_security.py."""

from __future__ import annotations

import json

import pytest

from sagaflow.choreography import MODES
from tests.shop import Shop

UNKNOWN = 999_999
CUSTOMER_ID = 1  # the customer every customer case is sent as


# --- every case in both saga modes: this module's stack, app and worker per mode -------


@pytest.fixture(scope="module", params=MODES)
def mode_stack(request, stacks_by_mode):
    return stacks_by_mode(request.param)


@pytest.fixture(scope="module")
def flask_app(mode_stack):
    return mode_stack.app


@pytest.fixture(scope="module")
def credentials(mode_stack):
    return mode_stack.credentials


@pytest.fixture(scope="module")
def worker(mode_stack):
    proc = mode_stack.worker()
    yield proc
    proc.stop()


@pytest.fixture
def shop(client, mode_stack) -> Shop:
    return Shop(client, mode_stack.rt, mode_stack._user_ids, mode_stack.credentials)


def _nested(depth: int) -> str:
    return '{"name": ' + "[" * depth + "]" * depth + ', "price": 1, "stock": 1}'


def _cases(product, coupon_id):
    order = {"items": [{"product_id": product, "quantity": 1}]}
    named = {"price": 5, "stock": 1}
    return [
        # (who, method, path, body, status); a str body is sent as raw bytes of JSON
        ("admin", "POST", "/products", "not json", 400),
        ("admin", "POST", "/products", [1, 2], 400),
        ("admin", "POST", "/products", {"name": "x", "price": 10}, 422),
        ("admin", "POST", "/products", {"name": "x", "price": "10", "stock": 1}, 422),
        ("admin", "POST", "/products", {"name": "x", "price": 0, "stock": 1}, 422),
        ("admin", "POST", "/products", {"name": "x", "price": -5, "stock": 1}, 422),
        ("admin", "POST", "/products", {"name": "x", "price": 5, "stock": -1}, 422),
        ("admin", "POST", "/products", {"name": "x", "price": 5.5, "stock": 1}, 422),
        ("admin", "POST", "/products", {"name": "", **named}, 422),
        ("admin", "POST", "/products", {"name": "x", "admin": True, **named}, 422),
        ("admin", "POST", "/products", {"name": "x" * 70_000, **named}, 413),
        # Names: control characters, bidi controls, nothing visible.
        ("admin", "POST", "/products", {"name": "mug\x00", **named}, 422),
        ("admin", "POST", "/products", {"name": "mug\x07bell", **named}, 422),
        ("admin", "POST", "/products", {"name": "line\nbreak", **named}, 422),
        ("admin", "POST", "/products", {"name": "gum\u202egnp.exe", **named}, 422),
        ("admin", "POST", "/products", {"name": "\u2067isolate", **named}, 422),
        ("admin", "POST", "/products", {"name": "\u200b\u200c\u200d\ufeff", **named}, 422),
        ("admin", "POST", "/products", {"name": "\u0301\u0301", **named}, 422),
        ("admin", "POST", "/products", {"name": "   ", **named}, 422),
        ("admin", "POST", "/coupons", {"name": "\x1bc", "discount": 1, "quantity": 1}, 422),
        # JSON that Python would take but must not: nesting, duplicates, NaN, bad bytes.
        ("admin", "POST", "/products", _nested(30_000), 400),
        ("admin", "POST", "/products", _nested(2_000), 400),
        ("admin", "POST", "/products", '{"name": "a", "name": "b", "price": 1, "stock": 1}', 400),
        ("admin", "POST", "/products", '{"name": "a", "price": NaN, "stock": 1}', 400),
        ("admin", "POST", "/products", '{"name": "a", "price": Infinity, "stock": 1}', 400),
        ("admin", "POST", "/products", b'{"name": "\xff\xfe", "price": 1, "stock": 1}', 400),
        ("admin", "POST", "/products", '{"name": "\\ud800", "price": 1, "stock": 1}', 422),
        ("admin", "POST", "/balances/7/charge", {"amount": 0}, 422),
        ("admin", "POST", "/balances/7/charge", {"amount": -100}, 422),
        ("admin", "POST", "/balances/7/charge", {"amount": True}, 422),
        ("admin", "POST", "/balances/7/charge", {}, 422),
        ("admin", "POST", "/balances/7/charge", '{"amount": 5, "amount": 500}', 400),
        ("admin", "POST", "/balances/abc/charge", {"amount": 10}, 404),
        ("admin", "POST", "/balances/0/charge", {"amount": 10}, 404),
        ("admin", "POST", "/balances/99999999999/charge", {"amount": 10}, 404),
        # Ids in paths are ASCII digits: Arabic-Indic and full-width digits are not ids.
        ("admin", "POST", "/balances/\u0667/charge", {"amount": 10}, 404),
        ("admin", "POST", "/balances/\uff17/charge", {"amount": 10}, 404),
        ("admin", "GET", f"/balances/{UNKNOWN}", None, 404),
        ("admin", "POST", "/coupons", {"name": "c", "discount": 0, "quantity": 1}, 422),
        ("admin", "POST", "/coupons", {"name": "c", "discount": 5, "quantity": 0}, 422),
        ("customer", "POST", f"/coupons/{UNKNOWN}/issue", {}, 404),
        ("customer", "POST", f"/coupons/{coupon_id}/issue", {"user_id": "1"}, 422),
        ("customer", "POST", f"/coupons/{coupon_id}/issue", {"user_id": 2}, 403),
        ("customer", "GET", f"/coupons/requests/{UNKNOWN}", None, 404),
        ("customer", "POST", "/orders", {"items": []}, 422),
        ("customer", "POST", "/orders", {}, 422),
        ("customer", "POST", "/orders", {**order, "user_id": "1"}, 422),
        ("customer", "POST", "/orders", {**order, "user_id": -1}, 422),
        ("customer", "POST", "/orders", {**order, "user_id": 2}, 403),
        ("customer", "POST", "/orders", {"items": [{"product_id": product, "quantity": 0}]}, 422),
        ("customer", "POST", "/orders", {"items": [{"product_id": product}]}, 422),
        ("customer", "POST", "/orders", {"items": [{"product_id": UNKNOWN, "quantity": 1}]}, 404),
        (
            "customer",
            "POST",
            "/orders",
            {
                "items": [
                    {"product_id": product, "quantity": 1},
                    {"product_id": product, "quantity": 2},
                ]
            },
            422,
        ),
        ("customer", "POST", "/orders", {**order, "issued_coupon_id": UNKNOWN}, 422),
        ("customer", "POST", "/orders", {**order, "issued_coupon_id": "x"}, 422),
        ("customer", "POST", "/orders", "{broken json", 400),
        ("customer", "POST", "/orders", "[" * 50_000, 400),
        ("customer", "GET", f"/orders/{UNKNOWN}", None, 404),
        ("customer", "GET", "/orders/abc", None, 404),
        ("customer", "GET", "/orders/\u0661\u0662", None, 404),
        ("customer", "GET", "/orders?limit=\u0661\u0662", None, 422),
        ("customer", "GET", "/orders?limit=0", None, 422),
        ("customer", "GET", "/orders?surprise=1", None, 422),
        ("customer", "GET", f"/products/{UNKNOWN}", None, 404),
        ("customer", "DELETE", "/orders", None, 405),
        ("customer", "GET", "/nowhere", None, 404),
    ]


@pytest.fixture(scope="module")
def existing(flask_app, credentials):
    client = flask_app.test_client()
    admin = credentials.admin
    product = client.post(
        "/products", json={"name": "p", "price": 10, "stock": 5}, headers=admin
    ).get_json()
    coupon = client.post(
        "/coupons", json={"name": "c", "discount": 1, "quantity": 1}, headers=admin
    ).get_json()
    return product["id"], coupon["id"]


def _send(client, credentials, who, method, path, body):
    headers = credentials.admin if who == "admin" else credentials.customer(CUSTOMER_ID)
    if isinstance(body, str | bytes):
        return client.open(
            path,
            method=method,
            data=body.encode() if isinstance(body, str) else body,
            headers={**headers, "Content-Type": "application/json"},
        )
    return client.open(path, method=method, json=body, headers=headers)


@pytest.mark.parametrize("index", range(len(_cases(1, 1))))
def test_bad_input_answers_4xx_json_and_changes_nothing(shop, client, credentials, existing, index):
    who, method, path, body, status = _cases(*existing)[index]
    before = shop.snapshot()

    response = _send(client, credentials, who, method, path, body)

    assert response.status_code == status, response.get_data(as_text=True)[:300]
    error = response.get_json()["error"]
    assert error["code"] and error["message"]
    assert shop.snapshot() == before


def test_names_are_normalised_to_nfc_and_trimmed(client, credentials):
    decomposed = "  Cafe\u0301 \U0001f469\u200d\U0001f373  "  # e + combining accent; a ZWJ emoji
    product = client.post(
        "/products", json={"name": decomposed, "price": 1, "stock": 1}, headers=credentials.admin
    )
    assert product.status_code == 201, product.get_data(as_text=True)
    assert product.get_json()["name"] == "Caf\u00e9 \U0001f469\u200d\U0001f373"


def test_oversized_or_non_ascii_idempotency_key_is_refused(shop, client, credentials, existing):
    product, _ = existing
    before = shop.snapshot()
    for key in ("k" * 300, "caf\u00e9"):
        response = client.post(
            "/orders",
            headers={"Idempotency-Key": key, **credentials.customer(CUSTOMER_ID)},
            json={"items": [{"product_id": product, "quantity": 1}]},
        )
        assert response.status_code == 400
        assert "Idempotency-Key" in response.get_json()["error"]["message"]
    assert shop.snapshot() == before


def test_totals_and_top_ups_beyond_the_cap_are_refused(shop, client, credentials):
    product = shop.product(stock=10, price=1_000_000_000)
    user = shop.new_user(balance=1_000_000_000)
    shop.charge(user, 1_000_000_000)
    before = shop.snapshot()

    too_big = client.post(
        "/orders",
        json={"items": [{"product_id": product, "quantity": 3}]},
        headers=credentials.customer(user),
    )
    overflow = client.post(
        f"/balances/{user}/charge", json={"amount": 200_000_000}, headers=credentials.admin
    )

    assert too_big.status_code == 422 and "total" in too_big.get_json()["error"]["message"]
    assert overflow.status_code == 422
    assert shop.snapshot() == before


def test_broker_down_accepts_the_order_and_it_starts_when_the_broker_is_back(
    shop, mode_stack, worker, credentials
):
    """The saga's start is in the order's transaction (the outbox): an API that cannot
    reach the broker accepts the order and says so; a relay that can sends it."""
    from app import create_app

    product = shop.product(stock=5, price=100)
    user = shop.new_user(balance=1_000)
    body = {"items": [{"product_id": product, "quantity": 1}]}
    coupon = shop.ok(
        shop.client.post(
            "/coupons",
            json={"name": "c", "discount": 1, "quantity": 1},
            headers=credentials.admin,
        ),
        201,
    )
    cut_off = create_app(mode_stack.settings.with_overrides(redis_url="redis://127.0.0.1:9/0"))
    me = credentials.customer(user)
    try:
        down = cut_off.test_client().post(
            "/orders", json=body, headers={"Idempotency-Key": "k-queued", **me}
        )
        assert down.status_code == 202, down.get_data(as_text=True)
        accepted = down.get_json()
        assert accepted["start"].startswith("queued: the broker cannot be reached")
        # A coupon request is not in an outbox: it is refused, and left REJECTED.
        issue = cut_off.test_client().post(f"/coupons/{coupon['id']}/issue", headers=me)
        assert issue.status_code == 503
    finally:
        cut_off.extensions["services"].dispose()
    rejected = shop.ok(shop.client.get(f"/users/{user}/coupons", headers=me))
    assert rejected == []  # the request was refused, not left PENDING for ever

    # The stack's relay reaches the broker: it sends the start, and the order completes.
    order = shop.wait_order(accepted["order_id"], ("COMPLETED",))
    assert shop.balance(user) == 900
    again = shop.order(user, product, key="k-queued")  # the same key: the same order
    assert again == accepted["order_id"]
    assert shop.balance(user) == 900 and order["status"] == "COMPLETED"


def test_json_error_bodies_never_echo_a_credential(client, credentials):
    token = credentials.token("customer", "1")
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for header in (f"Bearer {tampered}", f"Bearer {token}x", f"Basic {token}", token):
        response = client.get("/orders", headers={"Authorization": header})
        assert response.status_code == 401
        assert token[:40] not in response.get_data(as_text=True)
        assert json.loads(response.get_data())["error"]["code"] == "unauthorized"
