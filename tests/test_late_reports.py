"""A worker child killed mid-step, whose link_error callback arrives after its work was
finished by another path (the broker's redelivery or a DLQ retry): the late report parks
nothing, pages nobody, and leaves nothing for `requeue --all` to trip on. Real workers, a
real DLQ worker and a real HTTP server standing in for Slack, in both saga modes."""

from __future__ import annotations

import json

import pytest

from sagaflow._choreography import MODES
from sagaflow.celery_app import STEP_FAILED
from tests.inspect_view import eid as entry_id
from tests.slack_server import SlackServer
from tests.stack import Stack
from tests.support import wait_for


@pytest.fixture(scope="module")
def slack():
    with SlackServer() as server:
        yield server


@pytest.fixture(scope="module", params=MODES)
def stack(request, primary_backend, tmp_path_factory, slack):
    stack = Stack(
        primary_backend,
        tmp_path_factory.mktemp(f"late-{request.param}"),
        SAGA_MODE=request.param,
        SLACK_WEBHOOK_URL=slack.webhook_url,
    ).start()
    yield stack
    stack.stop()


def test_a_late_callback_of_a_killed_attempt_parks_nothing_and_pages_nobody(stack, slack):
    shop = stack.shop
    user = shop.new_user(balance=1_000)
    product = shop.product(stock=10, price=100)
    # The child dies right after use_balance committed, before it could record that:
    # whatever happens next (redelivery, its callback, a DLQ retry), the work is done.
    worker = stack.worker(faults="use_balance:crash:1")
    dlq = stack.dlq_worker()
    try:
        order_id = shop.order(user, product, quantity=2)
        order = shop.wait_order(order_id, ("COMPLETED",), timeout=120)
        eid = entry_id(order_id, "use_balance")
        # Whatever entry the killed attempt left is closed by the work's success.
        wait_for(
            lambda: (stack.rt.dead_letters.get(eid) or {"status": "resolved"})["status"]
            == "resolved",
            60,
            what="no open entry for the killed attempt",
        )
        # Its link_error callback, arriving now (as in the chaos run, 8 ms after the DLQ
        # retry succeeded): the very message Celery sends, on the step's queue.
        failure = {
            "workflow": "order",
            "saga_id": f"order-{order_id}",
            "name": "use_balance",
            "plan": [],
        }
        late = stack.runner.dispatcher.app.send_task(
            STEP_FAILED,
            args=(failure,),
            kwargs={"saga_id": f"order-{order_id}"},
            queue="balances",
        )
        wait_for(
            lambda: f"{STEP_FAILED}[{late.id}] succeeded" in worker.log(),
            60,
            what="the late callback to be handled",
        )
        requeue = stack.cli("requeue", "--all", "--json")
    finally:
        dlq.stop()
        worker.stop()

    assert "injecting fault" in worker.log()  # the child was killed
    assert order["status"] == "COMPLETED"
    entry = stack.rt.dead_letters.get(eid)
    assert entry is None or entry["status"] == "resolved", entry
    about_it = [t for t in slack.texts() if f"order-{order_id}" in t]
    assert len(about_it) <= 1, about_it  # one alert at most (none is expected)
    assert requeue.returncode == 0, requeue.stdout + requeue.stderr
    assert json.loads(requeue.stdout) == []  # nothing left to send
    assert shop.balance(user) == 1_000 - 200  # charged once
    assert shop.stock(product) == 10 - 2
