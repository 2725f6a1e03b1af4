"""Concurrency through a real gunicorn: coupons are never over-issued or issued twice to
one user, and stock never goes below zero nor is an order charged whose stock step failed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from config.settings import REPO_ROOT
from tests.support import free_port, wait_for

pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture(scope="module")
def api(stack_env, tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("gunicorn") / "gunicorn.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", "3", "app.wsgi:app"],
        cwd=REPO_ROOT,
        env={**os.environ, **stack_env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    wait_for(
        lambda: _get(base, "/healthz")[0] == 200 if proc.poll() is None else True,
        30,
        what="gunicorn",
    )
    assert proc.poll() is None, "gunicorn exited"
    yield base
    proc.terminate()
    proc.wait(15)
    log.close()


def _get(base, path):
    try:
        with urllib.request.urlopen(base + path, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
    except OSError:
        return 0, None


def _post(base, path, body):
    req = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_200_concurrent_issue_requests_issue_exactly_quantity_and_never_twice_to_a_user(api):
    status, coupon = _post(api, "/coupons", {"name": "flash", "discount": 100, "quantity": 50})
    assert status == 201
    # 150 distinct users, 50 of whom ask twice at the same moment.
    users = [20_000 + i for i in range(150)] + [20_000 + i for i in range(50)]

    with ThreadPoolExecutor(max_workers=40) as pool:
        answers = list(
            pool.map(
                lambda user: _post(api, f"/coupons/{coupon['id']}/issue", {"user_id": user}), users
            )
        )

    assert all(status == 202 for status, _ in answers)
    ids = [body["request_id"] for _, body in answers]
    final = wait_for(
        lambda: (
            (r := [_get(api, f"/coupons/requests/{i}")[1] for i in ids])
            and all(x["status"] != "PENDING" for x in r)
            and r
        ),
        120,
        what="every issue request to be served",
    )
    issued = [r for r in final if r["status"] == "ISSUED"]
    assert len(issued) == 50
    assert len({r["user_id"] for r in issued}) == 50
    assert _get(api, f"/coupons/{coupon['id']}")[1]["issued"] == 50
    holders = [
        c
        for u in set(users)
        for c in _get(api, f"/users/{u}/coupons")[1]
        if c["coupon_id"] == coupon["id"]
    ]
    assert len(holders) == 50


def test_100_concurrent_orders_never_oversell_and_never_charge_a_failed_order(api, rt):
    status, product = _post(api, "/products", {"name": "hot", "price": 100, "stock": 30})
    users = [30_000 + i for i in range(100)]
    for user in users:
        assert _post(api, f"/balances/{user}/charge", {"amount": 1_000})[0] == 200

    with ThreadPoolExecutor(max_workers=40) as pool:
        answers = list(
            pool.map(
                lambda user: _post(
                    api,
                    "/orders",
                    {"user_id": user, "items": [{"product_id": product["id"], "quantity": 1}]},
                ),
                users,
            )
        )
    assert all(status == 202 for status, _ in answers)
    orders = wait_for(
        lambda: (
            (o := [_get(api, f"/orders/{b['order_id']}")[1] for _, b in answers])
            and all(x["status"] in ("COMPLETED", "FAILED") for x in o)
            and o
        ),
        180,
        what="all 100 orders to finish",
    )

    completed = [o for o in orders if o["status"] == "COMPLETED"]
    failed = [o for o in orders if o["status"] == "FAILED"]
    assert len(completed) == 30 and len(failed) == 70
    assert _get(api, f"/products/{product['id']}")[1]["stock"] == 0
    assert all(o["failed_step"] == "decrease_stock" for o in failed)
    for order in failed:
        assert _get(api, f"/balances/{order['user_id']}")[1]["balance"] == 1_000
        assert order["payment"] is None
    for order in completed:
        assert _get(api, f"/balances/{order['user_id']}")[1]["balance"] == 900
