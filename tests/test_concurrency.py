"""Concurrency through a real gunicorn: coupons are never over-issued or issued twice to
one user, and stock never goes below zero nor is an order charged whose stock step failed."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support import ApiProcess, http, wait_for

pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture(scope="module")
def api(stack_env, tmp_path_factory):
    proc = ApiProcess(stack_env, tmp_path_factory.mktemp("gunicorn"), WEB_WORKERS="3").start()
    yield proc.url
    proc.stop()


@pytest.fixture(scope="module")
def call(api, credentials):
    """call(method, path, body=None, as_=headers) against the real API."""

    def call(method, path, body=None, as_=None):
        return http(method, api + path, body, as_)

    return call


def test_200_concurrent_issue_requests_issue_exactly_quantity_and_never_twice_to_a_user(
    call, credentials
):
    admin = credentials.admin
    status, coupon = call(
        "POST", "/coupons", {"name": "flash", "discount": 100, "quantity": 50}, admin
    )
    assert status == 201
    # 150 distinct users, 50 of whom ask twice at the same moment.
    users = [20_000 + i for i in range(150)] + [20_000 + i for i in range(50)]

    with ThreadPoolExecutor(max_workers=40) as pool:
        answers = list(
            pool.map(
                lambda user: call(
                    "POST", f"/coupons/{coupon['id']}/issue", {}, credentials.customer(user)
                ),
                users,
            )
        )

    assert all(status == 202 for status, _ in answers)
    ids = [body["request_id"] for _, body in answers]
    final = wait_for(
        lambda: (
            (r := [call("GET", f"/coupons/requests/{i}", as_=admin)[1] for i in ids])
            and all(x["status"] != "PENDING" for x in r)
            and r
        ),
        120,
        what="every issue request to be served",
    )
    issued = [r for r in final if r["status"] == "ISSUED"]
    assert len(issued) == 50
    assert len({r["user_id"] for r in issued}) == 50
    assert call("GET", f"/coupons/{coupon['id']}")[1]["issued"] == 50
    holders = [
        c
        for u in set(users)
        for c in call("GET", f"/users/{u}/coupons", as_=credentials.customer(u))[1]
        if c["coupon_id"] == coupon["id"]
    ]
    assert len(holders) == 50


def test_100_concurrent_orders_never_oversell_and_never_charge_a_failed_order(call, credentials):
    admin = credentials.admin
    status, product = call("POST", "/products", {"name": "hot", "price": 100, "stock": 30}, admin)
    users = [30_000 + i for i in range(100)]
    for user in users:
        assert call("POST", f"/balances/{user}/charge", {"amount": 1_000}, admin)[0] == 200

    with ThreadPoolExecutor(max_workers=40) as pool:
        answers = list(
            pool.map(
                lambda user: call(
                    "POST",
                    "/orders",
                    {"items": [{"product_id": product["id"], "quantity": 1}]},
                    credentials.customer(user),
                ),
                users,
            )
        )
    assert [s for s, _ in answers] == [202] * len(users), [a for a in answers if a[0] != 202]
    orders = wait_for(
        lambda: (
            (o := [call("GET", f"/orders/{b['order_id']}", as_=admin)[1] for _, b in answers])
            and all(x["status"] in ("COMPLETED", "FAILED") for x in o)
            and o
        ),
        180,
        what="all 100 orders to finish",
    )

    completed = [o for o in orders if o["status"] == "COMPLETED"]
    failed = [o for o in orders if o["status"] == "FAILED"]
    assert len(completed) == 30 and len(failed) == 70
    assert call("GET", f"/products/{product['id']}")[1]["stock"] == 0
    assert all(o["failed_step"] == "decrease_stock" for o in failed)
    for order in failed:
        assert call("GET", f"/balances/{order['user_id']}", as_=admin)[1]["balance"] == 1_000
        assert order["payment"] is None
    for order in completed:
        assert call("GET", f"/balances/{order['user_id']}", as_=admin)[1]["balance"] == 900
