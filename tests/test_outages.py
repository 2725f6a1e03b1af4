"""Dependencies that are slow or gone, with real workers on real PostgreSQL behind a real
TCP proxy (tests/tcp_proxy.py) that only the worker goes through:

- a worker whose database is slow to connect (longer than the soft time limit) still
  completes every order, with no DLQ and no stall check: each pool child opens its
  connections as it starts, outside any task's time limit;
- the products database gone for longer than every step retry and every DLQ attempt
  together: when it is back every order completes or compensates with no human action,
  and Slack (a real HTTP server standing in for it) hears once of the outage, naming the
  database, and once that it is over — not once per order.

Rules that need no process (what counts as unreachable, attempts given back, one page
per incident) are in test_failure_reports.py.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy.engine import make_url

from app.workflows import SERVICES
from sagaflow.dlq.store import NEEDS_HUMAN
from tests.slack_server import SlackServer
from tests.stack import Stack, available_backends
from tests.support import SLOW, wait_for
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.skipif(
    "postgresql" not in available_backends(),
    reason="needs PostgreSQL: a TCP proxy stands between a worker and its database",
)

# Far beyond what the tests wait: nothing here may be rescued by the stall check.
TIMINGS = {"SAGA_STALL_SECONDS": "900", "OUTAGE_ALERT_SECONDS": "3"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack("postgresql", tmp_path_factory.mktemp("outages"), **TIMINGS).start()
    yield stack
    stack.stop()


@pytest.fixture
def slack():
    with SlackServer() as server:
        yield server


def proxy_for(stack: Stack) -> TcpProxy:
    url = make_url(stack.env["ORDERS_DATABASE_URL"])
    return TcpProxy(url.host, url.port or 5432)


def through(proxy: TcpProxy, stack: Stack, services=SERVICES) -> dict[str, str]:
    """The worker's database settings, through the proxy for `services`."""
    return {
        f"{s.upper()}_DATABASE_URL": proxy.url_for(stack.env[f"{s.upper()}_DATABASE_URL"])
        for s in services
    }


def needs_human(stack: Stack, order_ids) -> list[dict]:
    sagas = {f"order-{o}" for o in order_ids}
    return [e for e in stack.runner.dead_letters.entries() if e["saga_id"] in sagas]


def test_a_worker_whose_database_is_slow_to_connect_completes_every_order(stack):
    shop = stack.shop
    user = shop.new_user(balance=100_000)
    product = shop.product(stock=100, price=100)
    with proxy_for(stack) as proxy:
        # Each new connection waits longer than a step's soft time limit (1 s here).
        proxy.connect_delay = 2.5
        worker = stack.worker(**through(proxy, stack))
        try:
            order_ids = [shop.order(user, product) for _ in range(6)]
            orders = [shop.wait_order(o, ("COMPLETED",), timeout=90 * SLOW) for o in order_ids]
        finally:
            worker.stop()
        assert proxy.connections >= len(SERVICES)  # the worker did go through it

    assert [o["status"] for o in orders] == ["COMPLETED"] * len(order_ids)
    assert needs_human(stack, order_ids) == []
    assert "cannot build its runtime" not in worker.log()
    assert shop.stock(product) == 100 - len(order_ids)
    assert shop.balance(user) == 100_000 - 100 * len(order_ids)


def test_a_database_outage_longer_than_every_retry_needs_no_human(stack, slack):
    shop = stack.shop
    rich, poor = shop.new_user(balance=100_000), shop.new_user(balance=50)
    product = shop.product(stock=100, price=100)
    dlq = stack.dlq_worker(SLACK_WEBHOOK_URL=slack.webhook_url)
    with proxy_for(stack) as proxy:
        # Only the products database is behind the proxy; the budget for waiting on it is
        # far longer than the outage, the step retries (2 x 1 s) and DLQ attempts much
        # shorter.
        worker = stack.worker(
            **through(proxy, stack, ["products"]), OUTAGE_BUDGET_SECONDS=str(int(600 * SLOW))
        )
        try:
            proxy.go_down()
            down_at = time.monotonic()
            completes = [shop.order(rich, product) for _ in range(4)]
            refused = [shop.order(poor, product) for _ in range(2)]  # balance too low
            wait_for(
                lambda: any("cannot be reached" in t for t in slack.texts()),
                60 * SLOW,
                what="the outage alert",
            )
            # Longer than every step retry and DLQ attempt added up (a few seconds here).
            while time.monotonic() - down_at < 12:
                time.sleep(0.2)
            proxy.come_back()
            final = {o: shop.wait_order(o, timeout=120 * SLOW) for o in completes + refused}
            wait_for(
                lambda: any("answers again" in t for t in slack.texts()),
                60 * SLOW,
                what="the all-clear",
            )
        finally:
            worker.stop()
            dlq.stop()

    assert {o: final[o]["status"] for o in completes} == dict.fromkeys(completes, "COMPLETED")
    assert {o: final[o]["status"] for o in refused} == dict.fromkeys(refused, "FAILED")
    assert [e for e in needs_human(stack, completes + refused) if e["status"] == NEEDS_HUMAN] == []
    texts = slack.texts()
    outage = [t for t in texts if "cannot be reached" in t]
    assert len(outage) == 1 and "the products database" in outage[0], texts
    assert len([t for t in texts if "answers again" in t]) == 1, texts
    assert len(texts) == 2, texts  # nothing per order
    assert shop.stock(product) == 100 - len(completes)  # the refused orders' stock is back
    assert (shop.balance(rich), shop.balance(poor)) == (100_000 - 100 * len(completes), 50)
