"""Per-client limits through the real gunicorn (config/gunicorn.py), on a stack of their own
with small limits: a customer flooding orders or coupon requests gets 429 rate_limited with
Retry-After while another customer is still served; an address sending failed credentials
gets 429 too, while a valid credential from it is still served; the limits are counted in
the app's Redis (a password in its URL shows nowhere), and a Redis that goes away turns no
request into a 500. Other stacks run generous limits (test_api_security.py) or the
defaults; the benchmark turns them off (RATE_LIMITS_ENABLED=0)."""

from __future__ import annotations

import http.client
import json

import pytest
import redis

from config.settings import Settings, SettingsError
from tests.stack import Stack
from tests.support import RedisServer

ORDERS, COUPONS, FAILED_AUTH = 5, 3, 10


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    # No worker: orders are accepted (202) and wait, which is all a limit needs.
    stack = Stack(
        "sqlite",
        tmp_path_factory.mktemp("limits"),
        SAGA_STALL_SECONDS="3600",
        RATE_LIMIT_ORDERS=f"{ORDERS}/minute",
        RATE_LIMIT_COUPON_REQUESTS=f"{COUPONS}/minute",
        RATE_LIMIT_FAILED_AUTH=f"{FAILED_AUTH}/minute",
    ).start()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def api(stack):
    proc = stack.api()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def product(stack) -> int:
    return stack.shop.product(stock=1_000, price=1)


class Answer:
    def __init__(self, status: int, body, headers):
        self.status, self.body, self.headers = status, body, headers

    @property
    def retry_after(self) -> int:
        return int(self.headers["Retry-After"])


def call(api, method: str, path: str, body=None, headers=None) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        conn.request(
            method,
            path,
            body=payload,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        response = conn.getresponse()
        raw = response.read()
        return Answer(
            response.status, json.loads(raw) if raw else None, dict(response.getheaders())
        )
    finally:
        conn.close()


def assert_rate_limited(answer: Answer, window: int = 60) -> None:
    assert answer.status == 429, (answer.status, answer.body)
    assert answer.body["error"]["code"] == "rate_limited", answer.body
    assert answer.body["error"]["message"]
    assert 1 <= answer.retry_after <= window, answer.headers


def test_a_customer_flooding_orders_gets_429_while_another_customer_is_served(stack, api, product):
    flooder, other = stack.shop.new_user(), stack.shop.new_user()
    order = {"items": [{"product_id": product, "quantity": 1}]}
    before = stack.rt.orders.summaries(None, 100, flooder)
    answers = [
        call(api, "POST", "/orders", order, stack.credentials.customer(flooder)) for _ in range(9)
    ]
    # Counted in Redis, so across gunicorn's two workers: exactly the limit gets through.
    assert [a.status for a in answers] == [202] * ORDERS + [429] * (9 - ORDERS)
    for refused in answers[ORDERS:]:
        assert_rate_limited(refused)
    # A refused order was not placed.
    placed = stack.rt.orders.summaries(None, 100, flooder)
    assert len(placed) - len(before) == ORDERS
    # Another customer, from the same address, is served meanwhile; so are the flooder's
    # reads, which are not limited.
    assert call(api, "POST", "/orders", order, stack.credentials.customer(other)).status == 202
    assert call(api, "GET", "/orders", headers=stack.credentials.customer(flooder)).status == 200


def test_a_customer_flooding_coupon_requests_gets_429_while_another_customer_is_served(stack, api):
    coupon = stack.shop.ok(
        stack.shop.client.post(
            "/coupons",
            json={"name": "rush", "discount": 1, "quantity": 100},
            headers=stack.credentials.admin,
        ),
        201,
    )
    flooder, other = stack.shop.new_user(), stack.shop.new_user()
    path = f"/coupons/{coupon['id']}/issue"
    answers = [call(api, "POST", path, {}, stack.credentials.customer(flooder)) for _ in range(6)]
    assert [a.status for a in answers] == [202] * COUPONS + [429] * (6 - COUPONS)
    for refused in answers[COUPONS:]:
        assert_rate_limited(refused)
    assert call(api, "POST", path, {}, stack.credentials.customer(other)).status == 202


def test_failed_authentication_from_one_address_gets_429_a_valid_credential_is_served(stack, api):
    bad = [{}, {"Authorization": "Bearer not.a.token"}, {"Authorization": "Basic b3BzOnB3"}]
    answers = [call(api, "GET", "/orders", headers=bad[i % 3]) for i in range(FAILED_AUTH + 5)]
    assert [a.status for a in answers] == [401] * FAILED_AUTH + [429] * 5
    for refused in answers[FAILED_AUTH:]:
        assert_rate_limited(refused)
    # The failures of any route count together, for this address.
    assert_rate_limited(call(api, "POST", "/products", {}, {"Authorization": "Bearer x"}))
    # Tokens cannot be guessed: a valid one from the same address is still served.
    me = stack.credentials.customer(stack.shop.new_user())
    assert call(api, "GET", "/orders", headers=me).status == 200
    assert call(api, "GET", "/products").status == 200
    # The console's sign-in form takes a token as its credential: from an address over
    # the limit, it refuses every attempt for the rest of the window.
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    token = stack.credentials.token("operator", "limited-op")
    conn.request(
        "POST",
        "/console/login",
        body=f"token={token}&next=/console/",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    login = conn.getresponse()
    login_body = login.read()
    conn.close()
    assert login.status == 429, login_body[:300]
    assert 1 <= int(login.getheader("Retry-After")) <= 60


def test_the_limits_live_in_the_apps_redis_and_a_redis_outage_is_not_a_500(
    stack, product, tmp_path
):
    """A Redis of its own, with a password in its URL: the limits are counted there (so
    every web process and host counts together); once it is gone, requests are still
    answered (each process falls back to counting in memory), never with a 500, and the
    password shows nowhere in the log."""
    password = "redis-pw-that-must-never-show"
    server = RedisServer(tmp_path / "redis").start()
    redis.Redis(port=server.port).config_set("requirepass", password)
    url = f"redis://:{password}@127.0.0.1:{server.port}/0"
    api = stack.api(REDIS_URL=url)
    try:
        user = stack.shop.new_user()
        me = stack.credentials.customer(user)
        order = {"items": [{"product_id": product, "quantity": 1}]}
        statuses = [call(api, "POST", "/orders", order, me).status for _ in range(ORDERS + 1)]
        assert statuses == [202] * ORDERS + [429]
        counted = redis.Redis.from_url(url).keys("LIMITS*")
        assert any(f"customer:{user}".encode() in key for key in counted), counted

        server.stop()
        other = stack.credentials.customer(stack.shop.new_user())
        during = [
            call(api, "POST", "/orders", order, other),
            call(api, "GET", "/orders", headers=other),
            call(api, "GET", "/orders", headers={"Authorization": "Bearer bad"}),
            call(api, "GET", "/products"),
        ]
        assert [a.status for a in during] == [202, 200, 401, 200], [
            (a.status, a.body) for a in during
        ]
        log = api.log()
        assert password not in log
        assert "internal_error" not in log and " 500 " not in log, log[-3000:]
    finally:
        api.stop()
        server.stop()


def test_rate_limits_can_be_turned_off(stack, product):
    """RATE_LIMITS_ENABLED=0 (the benchmark's stack): nothing is limited."""
    from app import create_app

    app = create_app(stack.settings.with_overrides(rate_limits_enabled=False))
    try:
        client = app.test_client()
        me = stack.credentials.customer(stack.shop.new_user())
        order = {"items": [{"product_id": product, "quantity": 1}]}
        statuses = [
            client.post("/orders", json=order, headers=me).status_code for _ in range(ORDERS + 3)
        ]
        assert statuses == [202] * (ORDERS + 3)
    finally:
        app.extensions["services"].dispose()


@pytest.mark.parametrize(
    "setting", ["RATE_LIMIT_ORDERS", "RATE_LIMIT_COUPON_REQUESTS", "RATE_LIMIT_FAILED_AUTH"]
)
def test_a_limit_that_is_not_one_is_refused_at_start_naming_the_setting(stack, setting):
    from app import create_app

    settings = Settings.from_env({**stack.env, setting: "lots"})
    with pytest.raises(SettingsError, match=setting):
        create_app(settings)
