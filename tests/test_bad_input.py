"""Bad input gets a 4xx with a JSON error body and changes nothing in any database: each
case is sent by a caller who may call the route (so it is the input that is refused, not
the caller), in-process through the Flask app. What only a real server shows (chunked
bodies, slow clients, the role table, the fuzz) is in test_api_security.py. A dependency
that is down (the broker, a database) is a 503 with Retry-After that changes nothing."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading

import pytest
from sqlalchemy.engine import make_url

from sagaflow._choreography import MODES
from tests.shop import Shop
from tests.support import free_port, http

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


# --- a database that cannot be reached ----------------------------------------------------

DB_PASSWORD = "pw-that-must-never-show"


def _database_unavailable(status: int, body: dict, retry_after, service: str) -> None:
    assert status == 503, (status, body)
    assert body["error"]["code"] == "database_unavailable", body
    assert service in body["error"]["message"], body
    assert retry_after and int(retry_after) > 0, retry_after
    shown = json.dumps(body)
    assert DB_PASSWORD not in shown and "postgresql" not in shown and "127.0.0.1" not in shown


@pytest.mark.parametrize("down", ["products", "orders"])
def test_a_database_that_cannot_be_reached_is_a_503_naming_it_that_changes_nothing(
    primary_stack, down, caplog
):
    """The service's database URL points at a port where nothing listens (the URL has a
    password, which must show nowhere): its requests are 503 database_unavailable with
    Retry-After, one log line each without a traceback, and nothing is written anywhere."""
    from app import create_app

    stack = primary_stack
    product = stack.shop.product(stock=5, price=10)
    user = stack.shop.new_user(balance=100)
    dead = f"postgresql+psycopg://saga:{DB_PASSWORD}@127.0.0.1:{free_port()}/{down}"
    urls = {**stack.settings.database_urls, down: dead}
    app = create_app(stack.settings.with_overrides(database_urls=urls))
    me, operator = stack.credentials.customer(user), stack.credentials.operator
    order = {"items": [{"product_id": product, "quantity": 1}]}
    requests = {
        "products": [("GET", "/products", None, {}), ("GET", f"/products/{product}", None, {})],
        "orders": [("GET", "/orders", None, me), ("GET", "/orders/1", None, operator)],
    }[down] + [("POST", "/orders", order, me)]
    before = stack.shop.snapshot()
    try:
        client = app.test_client()
        for method, path, body, headers in requests:
            caplog.clear()
            answer = client.open(path, method=method, json=body, headers=headers)
            _database_unavailable(
                answer.status_code, answer.get_json(), answer.headers.get("Retry-After"), down
            )
            said = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(said) == 1, [r.getMessage() for r in said]
            assert down in said[0].getMessage() and said[0].exc_info is None
            assert DB_PASSWORD not in said[0].getMessage()
    finally:
        app.extensions["services"].dispose()
    assert stack.shop.snapshot() == before


class _Proxy:
    """A TCP proxy on 127.0.0.1 in front of the real PostgreSQL server. `down()` cuts every
    connection through it and closes each new one at once; `up()` serves again, on the
    same port."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.is_down, self.closed = False, False
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, url: str, password: str) -> str:
        return (
            make_url(url)
            .set(host="127.0.0.1", port=self.port, password=password)
            .render_as_string(hide_password=False)
        )

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.is_down:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            s.close()

    def down(self) -> None:
        self.is_down = True
        with self.lock:
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self.sockets = []

    def up(self) -> None:
        self.is_down = False

    def close(self) -> None:
        self.closed = True
        self.down()
        self.listener.close()


def test_the_api_answers_503_while_postgresql_is_gone_and_serves_again_when_it_is_back(
    primary_stack,
):
    """Through the real gunicorn, whose four databases are reached through a proxy: cut
    it, and every request that needs a database is a 503 naming the service's database,
    logged in one line, with nothing changed; bring it back, and the API serves again."""
    stack = primary_stack
    if stack.backend != "postgresql":
        pytest.skip("needs PostgreSQL: the proxy stands in front of its server")
    server = make_url(stack.env["ORDERS_DATABASE_URL"])
    proxy = _Proxy(server.host, server.port)
    through = {
        f"{s.upper()}_DATABASE_URL": proxy.url(stack.env[f"{s.upper()}_DATABASE_URL"], DB_PASSWORD)
        for s in ("orders", "products", "balances", "coupons")
    }
    api = None
    try:
        api = stack.api(**through)
        admin = stack.credentials.admin
        product = http("POST", api.url + "/products", {"name": "p", "price": 5, "stock": 9}, admin)
        coupon = http(
            "POST", api.url + "/coupons", {"name": "c", "discount": 1, "quantity": 9}, admin
        )
        user = stack.shop.new_user(balance=100)
        me = stack.credentials.customer(user)
        order = {"items": [{"product_id": product[1]["id"], "quantity": 1}]}
        placed = http("POST", api.url + "/orders", order, me)
        assert placed[0] == 202, placed
        before = stack.shop.snapshot()

        proxy.down()
        needs = [
            ("GET", f"/products/{product[1]['id']}", None, {}, "products"),
            ("GET", f"/orders/{placed[1]['order_id']}", None, me, "orders"),
            ("GET", f"/balances/{user}", None, me, "balances"),
            ("POST", "/orders", order, me, "products"),  # its quote is read first
            ("POST", f"/coupons/{coupon[1]['id']}/issue", {}, me, "coupons"),
        ]
        for method, path, body, headers, service in needs:
            status, answer, retry_after = _call(api, method, path, body, headers)
            _database_unavailable(status, answer, retry_after, service)
        assert http("GET", api.url + "/healthz")[0] == 503
        assert stack.shop.snapshot() == before
        log = api.log()
        assert log.count("database unavailable") == len(needs), log[-3000:]
        assert DB_PASSWORD not in log and "Traceback" not in log, log[-3000:]

        proxy.up()
        assert http("GET", api.url + f"/products/{product[1]['id']}")[0] == 200
        assert http("POST", api.url + "/orders", order, me)[0] == 202
    finally:
        if api is not None:
            api.stop()
        proxy.close()


def _call(api, method: str, path: str, body, headers) -> tuple[int, dict, str | None]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", **headers}
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read()), response.getheader("Retry-After")
    finally:
        conn.close()


def test_json_error_bodies_never_echo_a_credential(client, credentials):
    token = credentials.token("customer", "1")
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for header in (f"Bearer {tampered}", f"Bearer {token}x", f"Basic {token}", token):
        response = client.get("/orders", headers={"Authorization": header})
        assert response.status_code == 401
        assert token[:40] not in response.get_data(as_text=True)
        assert json.loads(response.get_data())["error"]["code"] == "unauthorized"
