"""The operator console in a real headless Chromium (Debian's, driven by Playwright) against
the real API under gunicorn: one full story — a stuck order appears, the operator reads the
plan, requeues, and the order completes — and what a browser must not be able to do."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from app.order_saga import ORDER
from tests.inspect_view import eid
from tests.stack import Stack
from tests.support import wait_for

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (make browser installs it)"
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack("sqlite", tmp_path_factory.mktemp("console"))
    stack.start()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def api(stack):
    proc = stack.api()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()


def sign_in(page, api, token: str) -> None:
    page.goto(f"{api.url}/console/dlq")
    assert "/console/login" in page.url  # not signed in: the console asks for a token
    page.fill("textarea[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{api.url}/console/dlq")


def test_a_stuck_order_is_read_requeued_and_completes_in_the_browser(stack, api, page, tmp_path):
    shop = stack.shop
    stuck = stack.worker(faults="use_balance:timeout")
    dlq = stack.dlq_worker(faults="use_balance:timeout")
    try:
        user = shop.new_user(balance=1_000)
        product = shop.product(stock=10, price=100)
        order_id = shop.order(user, product, quantity=2)
        entry_id = eid(order_id, "use_balance")
        wait_for(
            lambda: (e := stack.rt.dead_letters.get(entry_id)) and e["status"] == "needs_human",
            90,
            what="the order to wait for a human",
        )
    finally:
        dlq.stop()
        stuck.stop()
    healthy = stack.worker()  # the balance service is healthy again
    try:
        sign_in(page, api, stack.credentials.token("operator", "night-shift"))
        # The DLQ page lists the stuck work with its error and attempts.
        row = page.locator("#entries tr", has_text=entry_id)
        assert "needs_human" in row.inner_text() and "SoftTimeLimitExceeded" in row.inner_text()
        _screenshot(page, tmp_path, "console-dlq.png")
        # The order's page: the timeline, the failure class, what happens next.
        page.click(f"text={entry_id}")
        assert page.inner_text("#order-status") == "NEEDS_ATTENTION"
        assert page.inner_text("#failure-class").startswith("5")
        assert "waits for a human" in page.inner_text("#what-next")
        assert "dead_lettered" in page.locator("#timeline tr", has_text="use_balance").inner_text()
        # Requeue: the plan first, then the confirmation.
        page.click(f"a[href='/console/dlq/{entry_id}/requeue']")
        plan = page.inner_text("#plan")
        assert "use_balance on the balances queue" in plan
        # Then the rest of the chain, in the declaration's order (use_coupon, ...).
        assert ", ".join(ORDER.steps_after("use_balance")) in plan
        page.click("#confirm")
        page.wait_for_url(f"{api.url}/console/orders/{order_id}*")
        assert "ok" in page.inner_text(".message")

        def completed():
            page.reload()
            return page.inner_text("#order-status") == "COMPLETED"

        wait_for(completed, 30, interval=0.5, what="the order page to say COMPLETED")
        history = page.inner_text("#history")
        assert "operator:night-shift" in history and "requeue" in history
        _screenshot(page, tmp_path, "console-order.png")
    finally:
        healthy.stop()
    assert shop.balance(user) == 1_000 - 200
    shop.check_invariants([order_id], product, 10, user, 1_000)


def _screenshot(page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / name), full_page=True)
    target = os.environ.get("CONSOLE_SCREENSHOTS")  # set to refresh the README's pictures
    if target:
        shutil.copy(tmp_path / name, Path(target) / name)


def test_a_customer_token_does_not_open_the_console(stack, api, page):
    page.goto(f"{api.url}/console/login")
    page.fill("textarea[name=token]", stack.credentials.token("customer", "7"))
    page.click("button[type=submit]")
    assert "does not open the console" in page.inner_text(".error")
    page.goto(f"{api.url}/console/")
    assert "/console/login" in page.url


def test_a_console_form_posted_from_elsewhere_is_refused(stack, api):
    from tests.support import http

    token = stack.credentials.token("operator", "night-shift")
    status, body = http(
        "POST",
        f"{api.url}/console/logout",
        headers={"Cookie": f"console_token={token}", "Origin": "http://evil.example"},
    )
    assert status == 403 and body["error"]["code"] == "forbidden"


def test_search_finds_an_order_by_id_and_by_user(stack, api, page):
    shop = stack.shop
    user = shop.new_user(balance=100)
    order_id = shop.order(user, shop.product(stock=5, price=10))
    sign_in(page, api, stack.credentials.token("operator", "night-shift"))
    page.goto(f"{api.url}/console/?q=order-{order_id}")
    assert page.locator("table tr").count() == 2  # the header and the one order
    page.goto(f"{api.url}/console/?q=user:{user}")
    assert f"order {order_id}" in page.inner_text("table")
