"""The API as a hostile client meets it, through the real gunicorn (config/gunicorn.py):
who may call what (a table that fails when a route is added without a rule), bodies sent
chunked past the limit, slow clients, a generated fuzz of malformed requests, and no secret
on a command line, in a log or in an answer."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.settings import REPO_ROOT
from tests.stack import Stack
from tests.support import http, wait_for

OWNER, OTHER = 4_101, 4_102  # two customers; the owner's data is what the table reads


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    # Its own stack, and no worker: nothing moves in the databases but what a request does
    # (nor does the stall check park the orders placed here, which no worker will run).
    # Rate limits on, but far above what the fuzz below sends from one address and one user,
    # so its requests reach the input checks rather than a 429 (tests/test_rate_limits.py
    # floods a stack of its own with small limits).
    stack = Stack(
        "sqlite",
        tmp_path_factory.mktemp("security"),
        SAGA_STALL_SECONDS="3600",
        RATE_LIMIT_FAILED_AUTH="100000/minute",
        RATE_LIMIT_ORDERS="100000/minute",
        RATE_LIMIT_COUPON_REQUESTS="100000/minute",
    ).start()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def api(stack):
    proc = stack.api()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def data(stack, api):
    """A product, a coupon issued to the owner, and the owner's order and issue request."""
    admin, owner = stack.credentials.admin, stack.credentials.customer(OWNER)
    call = _caller(api)
    product = call("POST", "/products", {"name": "p", "price": 10, "stock": 100}, admin)[1]
    coupon = call("POST", "/coupons", {"name": "c", "discount": 1, "quantity": 100}, admin)[1]
    call("POST", f"/balances/{OWNER}/charge", {"amount": 1_000}, admin)
    request = call("POST", f"/coupons/{coupon['id']}/issue", {}, owner)[1]
    issued = stack.rt.issue_requests.process(request["request_id"])  # no worker here
    order = call(
        "POST", "/orders", {"items": [{"product_id": product["id"], "quantity": 1}]}, owner
    )[1]
    return {
        "product": product["id"],
        "coupon": coupon["id"],
        "request": request["request_id"],
        "issued_coupon": issued["issued_coupon_id"],
        "order": order["order_id"],
        "user": OWNER,
    }


def _caller(api):
    def call(method, path, body=None, headers=None):
        return http(method, api.url + path, body, headers)

    return call


# --- who may do what ------------------------------------------------------------------

WHO = ("anonymous", "owner", "other", "admin", "operator")


def _row(anonymous, owner, other, admin, operator):
    return dict(zip(WHO, (anonymous, owner, other, admin, operator), strict=True))


# (method, rule) -> (path, body, expected status for each caller). "other" is a second
# customer reaching for the owner's data (or, on a write, naming the owner in the body).
ACCESS = {
    ("POST", "/products"): (
        "/products",
        {"name": "n", "price": 1, "stock": 1},
        _row(401, 403, 403, 201, 403),
    ),
    ("GET", "/products"): ("/products", None, _row(200, 200, 200, 200, 200)),
    ("GET", "/products/<id:product_id>"): (
        "/products/{product}",
        None,
        _row(200, 200, 200, 200, 200),
    ),
    ("POST", "/balances/<id:user_id>/charge"): (
        "/balances/{user}/charge",
        {"amount": 1},
        _row(401, 403, 403, 200, 403),
    ),
    ("GET", "/balances/<id:user_id>"): (
        "/balances/{user}",
        None,
        _row(401, 200, 404, 200, 200),
    ),
    ("POST", "/coupons"): (
        "/coupons",
        {"name": "n", "discount": 1, "quantity": 1},
        _row(401, 403, 403, 201, 403),
    ),
    ("GET", "/coupons/<id:coupon_id>"): ("/coupons/{coupon}", None, _row(200, 200, 200, 200, 200)),
    ("POST", "/coupons/<id:coupon_id>/issue"): (
        "/coupons/{coupon}/issue",
        {"user_id": OWNER},
        _row(401, 202, 403, 403, 403),
    ),
    ("GET", "/coupons/requests/<id:request_id>"): (
        "/coupons/requests/{request}",
        None,
        _row(401, 200, 404, 200, 200),
    ),
    ("GET", "/users/<id:user_id>/coupons"): (
        "/users/{user}/coupons",
        None,
        _row(401, 200, 404, 200, 200),
    ),
    ("POST", "/orders"): (
        "/orders",
        {"user_id": OWNER, "items": [{"product_id": "{product}", "quantity": 1}]},
        _row(401, 202, 403, 403, 403),
    ),
    ("GET", "/orders"): ("/orders", None, _row(401, 200, 200, 200, 200)),
    ("GET", "/orders/<id:order_id>"): ("/orders/{order}", None, _row(401, 200, 404, 200, 200)),
    # Only the customer, on its own order; that order is still PENDING here (no worker).
    ("POST", "/orders/<id:order_id>/refund"): (
        "/orders/{order}/refund",
        None,
        _row(401, 409, 404, 403, 403),
    ),
    ("GET", "/healthz"): ("/healthz", None, _row(200, 200, 200, 200, 200)),
    ("GET", "/metrics"): ("/metrics", None, _row(401, 403, 403, 403, 200)),
}

# The operator console's pages take their credential from the console's cookie (the login
# page sets it from a token), not from the Authorization header: the table sends each
# caller's token as that cookie. Without one, a page redirects to the login page (303);
# a form posted without the console's CSRF token is refused (403), even an operator's.
CONSOLE = {
    ("GET", "/console/login"): ("/console/login", _row(200, 200, 200, 200, 200)),
    ("POST", "/console/login"): ("/console/login", _row(401, 403, 403, 403, 303)),
    ("POST", "/console/logout"): ("/console/logout", _row(303, 403, 403, 403, 403)),
    ("GET", "/console/"): ("/console/", _row(303, 403, 403, 403, 200)),
    ("GET", "/console/orders/<id:order_id>"): (
        "/console/orders/{order}",
        _row(303, 403, 403, 403, 200),
    ),
    ("GET", "/console/dlq"): ("/console/dlq", _row(303, 403, 403, 403, 200)),
    ("GET", "/console/dlq/<path:entry_id>/<any('dry-run', requeue, compensate, resolve):action>"): (
        "/console/dlq/order-999:use_balance/dry-run",
        _row(303, 403, 403, 403, 404),
    ),
    ("POST", "/console/dlq/<path:entry_id>/<any(requeue, compensate, resolve):action>"): (
        "/console/dlq/order-999:use_balance/requeue",
        _row(303, 403, 403, 403, 403),
    ),
    # The owner's order is still PENDING here (no worker): its cancel's dry run shows.
    ("GET", "/console/sagas/<saga_id>/cancel"): (
        "/console/sagas/order-{order}/cancel",
        _row(303, 403, 403, 403, 200),
    ),
    ("POST", "/console/sagas/<saga_id>/cancel"): (
        "/console/sagas/order-{order}/cancel",
        _row(303, 403, 403, 403, 403),
    ),
}


def _headers(stack, who: str) -> dict:
    creds = stack.credentials
    return {
        "anonymous": {},
        "owner": creds.customer(OWNER),
        "other": creds.customer(OTHER),
        "admin": creds.admin,
        "operator": creds.operator,
    }[who]


def _fill(value, data: dict):
    if isinstance(value, str):
        filled = value.format(**data)
        return int(filled) if value.startswith("{") and filled.isdigit() else filled
    if isinstance(value, dict):
        return {k: _fill(v, data) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, data) for v in value]
    return value


def test_every_route_has_a_row_in_the_access_table(stack):
    # Every route, those Flask adds by itself (its static files route) included.
    routes = {
        (method, rule.rule)
        for rule in stack.app.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert routes == set(ACCESS) | set(CONSOLE), "a route was added or removed: give it a row"


def test_flask_serves_no_files_and_its_own_routes_need_a_rule_too(stack, api):
    from flask import Flask

    from app.auth import TokenVerifier
    from app.http import access

    for path in ("/static/x", "/static/../app/wsgi.py", "/static/"):
        status, answer = http("GET", api.url + path)
        assert status == 404, (path, status, answer)
        assert answer["error"]["code"] == "not_found"
    # An app on which Flask added its static route refuses to start like any other
    # route without a rule.
    with pytest.raises(RuntimeError, match="without an access rule: static"):
        access.install(Flask("probe"), TokenVerifier(stack.credentials.dir))


def test_an_endpoint_without_a_rule_is_refused_not_a_500(stack, caplog):
    """A route added after the check at start (an extension, a late blueprint) is refused
    with the JSON error body, and the refusal is logged."""
    from flask import Flask

    from app.auth import TokenVerifier
    from app.http import access
    from app.http.errors import register_error_handlers

    app = Flask("probe", static_folder=None)
    register_error_handlers(app)
    access.install(app, TokenVerifier(stack.credentials.dir))
    app.add_url_rule("/late", "late", lambda: "served")
    answer = app.test_client().get("/late")
    assert answer.status_code == 404, answer.get_data(as_text=True)
    assert answer.get_json()["error"]["code"] == "not_found"
    said = [r.getMessage() for r in caplog.records]
    assert any("late" in line and "no access rule" in line for line in said), said


@pytest.mark.parametrize("route", list(ACCESS), ids=[f"{m} {r}" for m, r in ACCESS])
def test_each_role_may_call_only_what_its_rule_allows(stack, api, data, route):
    template, body, expected = ACCESS[route]
    call = _caller(api)
    for who in WHO:
        status, answer = call(
            route[0], _fill(template, data), _fill(body, data), _headers(stack, who)
        )
        assert status == expected[who], (who, route, status, answer)
        if status >= 400:
            assert answer["error"]["code"] and answer["error"]["message"], answer


@pytest.mark.parametrize("route", list(CONSOLE), ids=[f"{m} {r}" for m, r in CONSOLE])
def test_each_role_may_open_only_what_the_console_allows(stack, api, data, route):
    import http.client
    from urllib.parse import urlencode

    template, expected = CONSOLE[route]
    path = _fill(template, data)
    for who in WHO:
        token = _headers(stack, who).get("Authorization", "").removeprefix("Bearer ")
        conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
        if path == "/console/login" and route[0] == "POST":
            body = urlencode({"token": token, "next": "/console/"})
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
        else:
            body, headers = None, ({"Cookie": f"console_token={token}"} if token else {})
        conn.request(route[0], path, body=body, headers=headers)
        answer = conn.getresponse()
        answer.read()
        conn.close()
        assert answer.status == expected[who], (who, route, answer.status)
        if answer.status == 303 and who == "anonymous":
            assert answer.getheader("Location").startswith("/console/login")


def test_an_app_with_a_route_without_a_rule_refuses_to_start(stack):
    from flask import Blueprint

    from app.auth import TokenVerifier
    from app.http import access

    app = type(stack.app)("probe")
    forgotten = Blueprint("forgotten", __name__)
    forgotten.add_url_rule("/secret", "secret", lambda: "x")
    app.register_blueprint(forgotten)
    with pytest.raises(RuntimeError, match="without an access rule: forgotten.secret"):
        access.install(app, TokenVerifier(stack.credentials.dir))


def test_missing_expired_foreign_and_tampered_tokens_are_401(stack, api, tmp_path):
    from app.auth import Keyring

    foreign = Keyring(tmp_path / "other-keys")
    foreign.init()
    good = stack.credentials.token("customer", str(OWNER))
    expired = stack.credentials.keyring.mint("customer", str(OWNER), -120)  # leeway is 30 s
    bad = {
        "expired": {"Authorization": f"Bearer {expired}"},
        "none": {},
        "not bearer": {"Authorization": f"Token {good}"},
        "empty": {"Authorization": "Bearer "},
        "garbage": {"Authorization": "Bearer not.a.token"},
        "foreign key": {"Authorization": f"Bearer {foreign.mint('admin', 'mallory', 600)}"},
        "tampered": {"Authorization": f"Bearer {good[:-2]}{'AA' if good[-2:] != 'AA' else 'BB'}"},
    }
    for name, headers in bad.items():
        status, answer = http("GET", api.url + "/orders", headers=headers)
        assert status == 401, name
        assert answer["error"]["code"] == "unauthorized"
    assert http("GET", api.url + "/orders", headers=_bearer(good))[0] == 200


def test_a_rotated_key_keeps_old_tokens_until_it_is_retired(stack, api, tmp_path):
    env = {"AUTH_DIR": str(stack.credentials.dir)}
    old = stack.credentials.keyring.mint("operator", "rotator", 600)
    rotated = _auth_cli(env, "rotate-key")
    assert rotated.returncode == 0 and "1 older key(s) still accepted" in rotated.stdout
    assert http("GET", api.url + "/orders", headers=_bearer(old))[0] == 200
    new = _auth_cli(env, "issue-token", "--role", "operator", "--name", "rotator").stdout.strip()
    assert http("GET", api.url + "/orders", headers=_bearer(new))[0] == 200
    # Retiring revokes everything the older keys signed, the test's own tokens included.
    assert _auth_cli(env, "rotate-key", "--retire-old").returncode == 0
    time.sleep(0.05)
    assert http("GET", api.url + "/orders", headers=_bearer(old))[0] == 401
    stack.credentials._tokens.clear()  # re-mint with the key that is now current


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _auth_cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "app.auth", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_auth_cli_usage_errors_are_one_line(stack):
    env = {"AUTH_DIR": str(stack.credentials.dir)}
    for args in (
        ("issue-token", "--role", "customer"),
        ("issue-token", "--role", "customer", "--user", "\u0667"),
        ("issue-token", "--role", "wizard", "--user", "1"),
        ("issue-token", "--role", "admin", "--name", "Alice Smith"),
        ("issue-token", "--role", "customer", "--user", "1", "--ttl", "forever"),
    ):
        result = _auth_cli(env, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
        assert result.stdout == ""


# --- what only a real server shows --------------------------------------------------


def _raw(api, request: bytes, read_timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", api.port), timeout=read_timeout) as conn:
        conn.sendall(request)
        chunks = []
        while True:
            try:
                chunk = conn.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def _chunked_post(api, path: str, body: bytes, token: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode()
    chunks = b"".join(
        f"{len(body[i : i + 4096]):x}\r\n".encode() + body[i : i + 4096] + b"\r\n"
        for i in range(0, len(body), 4096)
    )
    return _raw(api, head + chunks + b"0\r\n\r\n")


def test_a_chunked_body_over_the_limit_is_refused_like_one_with_content_length(stack, api):
    token = stack.credentials.token("admin", "test-admin")
    before = stack.shop.snapshot()
    # Valid JSON up to the limit, then more: cut at the limit it would parse as a product.
    body = b'{"name": "big", "price": 1, "stock": 1, "pad": "' + b"x" * 70_000 + b'"}'
    answer = _chunked_post(api, "/products", body, token)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"request_entity_too_large"' in answer
    status, _ = http(
        "POST", api.url + "/products", json.loads(body), stack.credentials.admin
    )  # the same body with a Content-Length
    assert status == 413
    assert stack.shop.snapshot() == before

    small = _chunked_post(api, "/products", b'{"name": "ok", "price": 1, "stock": 1}', token)
    assert small.startswith(b"HTTP/1.1 201"), small[:200]


# Chunked framing that is wrong, each after a valid head: gunicorn finds it only when the
# app reads the body.
MALFORMED_CHUNKS = {
    "bad chunk size": b"zz\r\n{}\r\n0\r\n\r\n",
    "empty chunk size": b"\r\n{}\r\n0\r\n\r\n",
    "bad chunk extension": b"2;=x\r\n{}\r\n0\r\n\r\n",
    "missing chunk terminator": b"2\r\n{}XX0\r\n\r\n",
    "chunk size line too long": b"1" + b"0" * 9000 + b"\r\n",
    "no last chunk": b"2\r\n{}\r\n",  # then the client closes its side
    "truncated chunk": b"20\r\n{\"items\": []",  # 32 bytes announced, 12 sent
    "no end after the last chunk": b"2\r\n{}\r\n0\r\n",
}


def _raw_half_closed(api, request: bytes) -> bytes:
    """Send `request`, then close our sending side (what a client cut short does), and
    read the answer."""
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as conn:
        conn.sendall(request)
        conn.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.mark.parametrize("case", list(MALFORMED_CHUNKS))
def test_a_malformed_chunked_body_is_a_400_and_changes_nothing(stack, api, data, case):
    before = stack.shop.snapshot()
    token = stack.credentials.token("customer", str(OWNER))
    for path, content_type in (
        ("/orders", "application/json"),
        ("/console/login", "application/x-www-form-urlencoded"),  # read by Werkzeug's form parser
    ):
        head = (
            f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n"
            f"Authorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode()
        answer = _raw_half_closed(api, head + MALFORMED_CHUNKS[case])
        assert answer.startswith(b"HTTP/1.1 400"), (path, answer[:300])
        error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
        assert error["code"] == "bad_request" and error["message"], error
    assert stack.shop.snapshot() == before
    assert "Traceback" not in api.log()


def test_slow_clients_sending_half_a_header_do_not_stall_the_api(api):
    stalled = []
    try:
        for _ in range(8):  # four times what stalled two sync workers
            conn = socket.create_connection(("127.0.0.1", api.port), timeout=30)
            conn.sendall(b"GET /products HTTP/1.1\r\nHost: slow\r\nX-Half: ")
            stalled.append(conn)
        time.sleep(1)
        for _ in range(5):
            status, _ = http("GET", api.url + "/products", timeout=10)
            assert status == 200
    finally:
        for conn in stalled:
            conn.close()


# --- the fuzz ------------------------------------------------------------------------

VALID = {
    "/products": ("admin", {"name": "widget", "price": 5, "stock": 1}),
    "/coupons": ("admin", {"name": "promo", "discount": 1, "quantity": 1}),
    f"/balances/{OWNER}/charge": ("admin", {"amount": 5}),
    "/orders": ("owner", {"items": [{"product_id": 1, "quantity": 1}]}),
    "/coupons/1/issue": ("owner", {}),
}
BAD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False),
    st.integers(min_value=-(2**70), max_value=0),
    st.integers(min_value=2**40, max_value=2**70),
    st.text(max_size=20).map(lambda t: t + "\x00"),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
# Refused anywhere in a name (control, bidi and surrogate characters).
CONTROL = st.sampled_from(["\x00", "\x01", "\x1b", "\x7f", "\u202e", "\u2066", "\u061c", "\ud800"])
# Refused as a whole name: nothing visible.
INVISIBLE = st.text(alphabet="\u200b\u200c\u200d\u2060\ufeff \u0301", min_size=1, max_size=6)


@st.composite
def malformed(draw):
    """One request that is wrong by construction: (method, path, headers, raw body)."""
    path = draw(st.sampled_from(sorted(VALID)))
    role, valid = VALID[path]
    body = json.loads(json.dumps(valid))
    kind = draw(
        st.sampled_from(
            [
                "drop",
                "extra",
                "wrong value",
                "control chars",
                "duplicate key",
                "truncated",
                "nested",
                "bytes",
                "not an object",
                "bad token",
                "bad path id",
                "wrong content type",
            ]
        )
    )
    headers = {"Content-Type": "application/json", "Authorization": role}
    raw = None
    if kind == "drop" and body:
        body.pop(draw(st.sampled_from(sorted(body))))
        if not body and path.endswith("/issue"):
            body = {"user_id": "me"}
    elif kind == "extra" or (kind == "drop" and not body):
        body[draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in valid))] = 1
    elif kind == "wrong value" and valid:
        body[draw(st.sampled_from(sorted(valid)))] = draw(BAD_VALUES)
    elif kind == "control chars":
        if "name" in body and draw(st.booleans()):
            body["name"] = draw(INVISIBLE)
        elif "name" in body:
            body["name"] = draw(st.text(max_size=5)) + draw(CONTROL) + draw(st.text(max_size=5))
        else:
            body["user_id"] = draw(CONTROL)
    elif kind == "duplicate key":
        text = json.dumps(body)
        first_key = next(iter(body), "user_id")
        raw = ('{"' + first_key + '": 0, ' + text[1:]).encode() if body else b'{"a": 1, "a": 2}'
    elif kind == "truncated":
        text = json.dumps(body).encode()
        raw = text[: draw(st.integers(min_value=0, max_value=max(len(text) - 1, 0)))] or b"{"
    elif kind == "nested":
        depth = draw(st.integers(min_value=1_100, max_value=20_000))
        raw = ('{"x": ' + "[" * depth + "]" * depth + "}").encode()
    elif kind == "bytes":
        raw = draw(st.binary(min_size=1, max_size=64)) + b"\xff"
    elif kind == "not an object":
        raw = json.dumps(
            draw(st.one_of(st.integers(), st.lists(st.integers()), st.text()))
        ).encode()
    elif kind == "bad token":
        headers["Authorization"] = draw(
            st.sampled_from(["", "Bearer", "Bearer x.y.z", "Basic b3BzOnB3"])
        ) + draw(st.text(alphabet="abcXYZ019.-_", max_size=20))
    elif kind == "bad path id":
        bad_id = draw(st.sampled_from(["\u0661", "\uff11", "0", "-1", "1e3", "99999999999", "x"]))
        path = path.replace(str(OWNER), bad_id).replace("/1/", f"/{bad_id}/")
        if path in ("/products", "/coupons", "/orders"):
            path = f"/orders/{bad_id}"
    else:  # wrong content type
        headers["Content-Type"] = draw(st.sampled_from(["text/plain", "application/xml", ""]))
        if path.endswith("/issue"):
            raw = b"user_id=1"
    if raw is None:
        raw = json.dumps(body).encode()
    return "POST", path, headers, raw


def test_a_thousand_malformed_requests_get_4xx_json_and_change_nothing(stack, api, data):
    creds = stack.credentials
    tokens = {
        "admin": creds.admin["Authorization"],
        "owner": creds.customer(OWNER)["Authorization"],
    }
    before = stack.shop.snapshot()
    seen: list[int] = []

    @settings(
        max_examples=1_000,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(malformed())
    def one(request):
        method, path, headers, raw = request
        headers = {
            **headers,
            "Authorization": tokens.get(headers["Authorization"], headers["Authorization"]),
        }
        answer = _send_raw(api, method, path, headers, raw)
        seen.append(answer.status)
        assert 400 <= answer.status < 500, (request, answer.status, answer.body[:300])
        error = json.loads(answer.body)["error"]
        assert error["code"] and error["message"]

    one()
    assert len(seen) >= 1_000
    assert stack.shop.snapshot() == before


class _Answer:
    def __init__(self, status: int, body: bytes):
        self.status, self.body = status, body


def _send_raw(api, method: str, path: str, headers: dict, raw: bytes) -> _Answer:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    try:
        sendable = {k: v for k, v in headers.items() if v != "" or k != "Content-Type"}
        conn.request(method, _quote(path), body=raw, headers=sendable)
        response = conn.getresponse()
        return _Answer(response.status, response.read())
    finally:
        conn.close()


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="/?=&")


# --- secrets ---------------------------------------------------------------------------


def test_no_secret_on_a_command_line_in_a_log_or_in_an_answer(stack, api, data):
    token = stack.credentials.token("customer", str(OWNER))
    call = _caller(api)
    in_query = [
        call("GET", f"/orders?{name}={token}&status=PENDING", headers={"User-Agent": "q-probe"})
        for name in ("access_token", "token", "jwt", "key", "password", "secret", "x")
    ]
    answers = [
        call("GET", f"/orders/{data['order']}", headers=_bearer(token))[1],
        call("GET", "/orders", headers=_bearer(token + "x"))[1],
        call("GET", "/healthz")[1],
        *(answer for _, answer in in_query),
    ]
    # A token in a query string is not a credential, and gunicorn's access log, which
    # writes every request line, must not keep it either.
    assert [status for status, _ in in_query] == [401] * len(in_query)
    wait_for(lambda: api.log().count('"q-probe"') == len(in_query), 10, what="the access log")
    private_key = (stack.credentials.dir / "signing-key.json").read_text()
    secret_key_line = json.loads(private_key)["private_key"].splitlines()[1]
    command_lines = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True).stdout
    for shown in [json.dumps(answers), command_lines, api.log()]:
        assert token not in shown
        assert secret_key_line not in shown
    minted = _auth_cli(
        {"AUTH_DIR": str(stack.credentials.dir)},
        "issue-token",
        "--role",
        "operator",
        "--name",
        "kept-private",
        "--out",
        str(stack.workdir / "op.token"),
    )
    assert minted.returncode == 0
    written = (stack.workdir / "op.token").read_text().strip()
    assert written not in minted.stdout + minted.stderr
    assert (stack.workdir / "op.token").stat().st_mode & 0o077 == 0
