"""Failure classes 2 to 5 end to end: work reaches the DLQ, the DLQ worker retries it and
the saga goes on; retries run out and exactly one Slack message arrives with the command
to act; the CLI then finishes the saga; Slack failing or a killed DLQ worker loses nothing."""

from __future__ import annotations

import json
import time

import pytest

from app.order_saga import ORDER
from app.workflows import SERVICES
from tests.inspect_view import eid as entry_id
from tests.slack_server import SlackServer
from tests.stack import Stack
from tests.support import wait_for


@pytest.fixture(scope="module")
def slack():
    with SlackServer() as server:
        yield server


@pytest.fixture(scope="module")
def stack(primary_backend, tmp_path_factory, slack):
    stack = Stack(
        primary_backend, tmp_path_factory.mktemp("dlq"), SLACK_WEBHOOK_URL=slack.webhook_url
    ).start()
    yield stack
    stack.stop()


@pytest.fixture(autouse=True)
def slack_ok(slack):
    slack.messages.clear()
    slack.answer = 200


# An orchestrator that calls a saga stalled after a few seconds; the settings insist that
# the stall time exceed the broker's redelivery, which exceeds a retry plus the hard limit.
QUICK_STALL = {"SAGA_STALL_SECONDS": "7", "BROKER_VISIBILITY_TIMEOUT": "5", "STEP_TIME_LIMIT": "3"}


def _customer(stack, stock=10, balance=1_000):
    shop = stack.shop
    return shop.new_user(balance=balance), shop.product(stock=stock, price=100)


def _dead_lettered(stack, order_id, name):
    return wait_for(
        lambda: (e := stack.rt.dead_letters.get(entry_id(order_id, name))) and e,
        60,
        what=f"{order_id}:{name} in the DLQ",
    )


def test_timed_out_step_is_retried_by_the_dlq_worker_and_the_saga_completes(stack):
    # The worker's own three tries time out; the fourth, from the DLQ worker, succeeds.
    worker = stack.worker(faults="use_balance:timeout:3")
    dlq = stack.dlq_worker(faults="use_balance:timeout:3")
    try:
        user, product = _customer(stack)
        order_id = stack.shop.order(user, product, quantity=2)
        stack.shop.wait_order(order_id, ("NEEDS_ATTENTION",))
        order = stack.shop.wait_order(order_id, ("COMPLETED",))
        wait_for(lambda: stack.shop.published(order_id) == 1, 30, what="publication")
    finally:
        dlq.stop()
        worker.stop()
    entry = stack.rt.dead_letters.get(entry_id(order_id, "use_balance"))
    assert (entry["status"], entry["attempts"]) == ("resolved", 1)
    assert order["steps"][2]["attempts"] == 4
    stack.shop.check_invariants([order_id], product, 10, user, 1_000)


def test_exhausted_retries_send_one_slack_alert_then_cli_requeue_completes_the_order(stack, slack):
    worker = stack.worker(faults="use_balance:timeout")
    dlq = stack.dlq_worker(faults="use_balance:timeout")
    try:
        user, product = _customer(stack)
        order_id = stack.shop.order(user, product, quantity=1)
        wait_for(lambda: slack.messages, 60, what="a Slack alert")
        time.sleep(2)  # long enough for any duplicate alert to arrive
    finally:
        dlq.stop()
        worker.stop()
    eid = entry_id(order_id, "use_balance")
    assert len(slack.messages) == 1
    text = slack.texts()[0]
    assert f"saga-dlq requeue {eid}" in text and f"order-{order_id}" in text
    assert "StepTimeout" in text or "SoftTimeLimitExceeded" in text
    listed = json.loads(stack.cli("list", "--json", "--status", "needs_human").stdout)
    assert [e["id"] for e in listed if e["saga_id"] == f"order-{order_id}"] == [eid]
    assert listed[-1]["kind"] == "step" and listed[-1]["attempts"] == 2

    plan = stack.cli("requeue", eid, "--dry-run")
    assert plan.returncode == 0 and "use_coupon" in plan.stdout
    assert stack.shop.get_order(order_id)["status"] == "NEEDS_ATTENTION"  # dry run: no change

    worker = stack.worker()  # the dependency is healthy again
    try:
        done = stack.cli("requeue", eid)
        assert done.returncode == 0, done.stderr
        order = stack.shop.wait_order(order_id, ("COMPLETED",))
        wait_for(lambda: stack.shop.published(order_id) == 1, 30, what="publication")
    finally:
        worker.stop()
    assert order["status"] == "COMPLETED"
    assert stack.rt.dead_letters.get(eid)["status"] == "resolved"
    stack.shop.check_invariants([order_id], product, 10, user, 1_000)


def test_cli_compensate_gives_up_a_stuck_step_and_undoes_the_order(stack):
    worker = stack.worker(faults="use_coupon:timeout")
    try:
        user, product = _customer(stack)
        coupon = stack.shop.coupon_for(user, discount=10)
        order_id = stack.shop.order(user, product, quantity=3, issued_coupon_id=coupon)
        _dead_lettered(stack, order_id, "use_coupon")
        # No DLQ worker runs here, so the entry is still "retrying": the operator forces it.
        result = stack.cli("compensate", entry_id(order_id, "use_coupon"), "--force", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["compensations"] == [
            "restore_coupon",
            "refund_balance",
            "restore_stock",
            "cancel_order",
        ]
        order = stack.shop.wait_order(order_id, ("FAILED",))
        wait_for(
            lambda: stack.rt.saga_log.step(order_id, "cancel_order")["status"] == "succeeded",
            30,
            what="cancel_order",
        )
    finally:
        worker.stop()
    assert order["failed_step"] == "use_coupon"
    assert stack.shop.issued_coupon(coupon)["status"] == "UNUSED"
    stack.shop.check_invariants([order_id], product, 10, user, 1_000, coupon)


def test_failed_publication_keeps_the_order_completed_and_is_retried(stack):
    worker = stack.worker(faults="publish_order:transient:3")
    dlq = stack.dlq_worker(faults="publish_order:transient:3")
    try:
        user, product = _customer(stack)
        order_id = stack.shop.order(user, product)
        entry = _dead_lettered(stack, order_id, "publish_order")
        assert entry["kind"] == "after_pivot"
        # The worker parks the publication at once; the saga log (and the order's status
        # with it) follows when the orchestrator has applied the pivot's success, which a
        # busy machine can put after the parking.
        stack.shop.wait_order(order_id, ("COMPLETED",), timeout=30, settle=False)
        wait_for(lambda: stack.shop.published(order_id) == 1, 30, what="publication")
    finally:
        dlq.stop()
        worker.stop()
    order = stack.shop.get_order(order_id)
    assert order["status"] == "COMPLETED"
    assert not [s for s in order["steps"] if s["kind"] == "compensation"]
    stack.shop.check_invariants([order_id], product, 10, user, 1_000)


def test_stuck_compensation_is_retried_by_the_dlq_worker_and_the_rest_follow(stack):
    worker = stack.worker(faults="use_coupon:business,refund_balance:transient:3")
    dlq = stack.dlq_worker(faults="refund_balance:transient:3")
    try:
        user, product = _customer(stack)
        coupon = stack.shop.coupon_for(user)
        order_id = stack.shop.order(user, product, quantity=2, issued_coupon_id=coupon)
        stack.shop.wait_order(order_id, ("NEEDS_ATTENTION",))
        order = stack.shop.wait_order(order_id, ("FAILED",))
        wait_for(
            lambda: stack.rt.saga_log.owed_compensations(order_id) == [],
            30,
            what="every compensation",
        )
    finally:
        dlq.stop()
        worker.stop()
    assert stack.rt.dead_letters.get(entry_id(order_id, "refund_balance"))["status"] == "resolved"
    assert order["failed_step"] == "use_coupon"
    stack.shop.check_invariants([order_id], product, 10, user, 1_000, coupon)


def test_slack_answering_500_loses_nothing_and_the_alert_arrives_once_it_recovers(stack, slack):
    slack.answer = 500
    worker = stack.worker(faults="decrease_stock:transient")
    dlq = stack.dlq_worker(faults="decrease_stock:transient")
    try:
        user, product = _customer(stack)
        order_id = stack.shop.order(user, product)
        wait_for(lambda: slack.failures >= 2, 60, what="failed alert attempts")
        eid = entry_id(order_id, "decrease_stock")
        entry = stack.rt.dead_letters.get(eid)
        assert entry["status"] == "needs_human" and not entry["alerted"]
        assert "answered 500" in entry["alert_error"]
        assert f"saga-dlq requeue {eid}" in dlq.log()  # the alert went to the log
        slack.answer = 200
        wait_for(lambda: slack.messages, 30, what="the alert once Slack recovers")
        time.sleep(1)
    finally:
        dlq.stop()
        worker.stop()
    assert len(slack.messages) == 1
    assert stack.rt.dead_letters.get(eid)["alerted"]
    assert "T000/B000/secret" not in dlq.log()  # the webhook URL is a secret


def test_slack_not_listening_keeps_the_entry_and_the_worker_alive(stack):
    worker = stack.worker(faults="decrease_stock:transient")
    dlq = stack.dlq_worker(
        faults="decrease_stock:transient",
        SLACK_WEBHOOK_URL="",
        SLACK_BOT_TOKEN="xoxb-never-logged",
        SLACK_CHANNEL="#ops",
        SLACK_API_URL="http://127.0.0.1:9/api/",
    )
    try:
        user, product = _customer(stack)
        order_id = stack.shop.order(user, product)
        eid = entry_id(order_id, "decrease_stock")
        wait_for(
            lambda: (e := stack.rt.dead_letters.get(eid)) and e.get("alert_error"),
            60,
            what="a failed alert",
        )
        time.sleep(1)
        assert dlq.proc.poll() is None
    finally:
        dlq.stop()
        worker.stop()
    entry = stack.rt.dead_letters.get(eid)
    assert entry["status"] == "needs_human" and not entry["alerted"]
    assert "Slack unreachable" in entry["alert_error"]
    assert "xoxb-never-logged" not in dlq.log()
    assert f"saga-dlq requeue {eid}" in dlq.log()
    # Handled by hand, so no later DLQ worker delivers this pending alert.
    assert stack.cli("resolve", eid, "--note", "checked by the test").returncode == 0


def test_bot_token_alert_reaches_chat_post_message(stack, slack):
    worker = stack.worker(faults="decrease_stock:transient")
    dlq = stack.dlq_worker(
        faults="decrease_stock:transient",
        SLACK_WEBHOOK_URL="",
        SLACK_BOT_TOKEN="xoxb-test",
        SLACK_CHANNEL="#saga-alerts",
        SLACK_API_URL=slack.api_url,
    )
    try:
        user, product = _customer(stack)
        order_id = stack.shop.order(user, product)
        wait_for(lambda: slack.messages, 60, what="a Slack alert")
    finally:
        dlq.stop()
        worker.stop()
    [message] = slack.messages
    assert message["path"] == "/api/chat.postMessage"
    assert message["body"]["channel"] == "#saga-alerts"
    assert message["auth"] == "Bearer xoxb-test"
    assert entry_id(order_id, "decrease_stock") in message["body"]["text"]


def test_a_worker_killed_while_running_a_dlq_retry_loses_nothing_and_applies_once(stack):
    # The worker's own three tries fail and the step is parked.
    first = stack.worker(faults="use_balance:transient:3")
    try:
        user, product = _customer(stack)
        order_id = stack.shop.order(user, product, quantity=2)
        eid = entry_id(order_id, "use_balance")
        _dead_lettered(stack, order_id, "use_balance")
        wait_for(
            lambda: stack.rt.saga_log.step(order_id, "use_balance")["status"] == "dead_lettered",
            20,
            what="the step parked",
        )
    finally:
        first.stop()
    # The DLQ's retry runs on a worker that dies right after it applied the step, before
    # the message is acknowledged: the fault counter is shared, so occurrence 4 crashes.
    second = stack.worker(faults="use_balance:crash:4")
    dlq = stack.dlq_worker()
    try:
        order = stack.shop.wait_order(order_id, ("COMPLETED",), timeout=90)
    finally:
        dlq.stop()
        second.stop()
    assert "injecting fault" in second.log() and "crash" in second.log()
    assert stack.rt.dead_letters.get(eid)["status"] == "resolved"
    assert order["status"] == "COMPLETED"
    assert stack.shop.balance(user) == 1_000 - 200  # charged once
    stack.shop.check_invariants([order_id], product, 10, user, 1_000)


def test_saga_whose_message_was_lost_is_found_parked_and_finished(stack):
    user, product = _customer(stack)
    order_id = stack.shop.order(user, product, quantity=2)  # no worker is running
    stack.rt.redis.delete("orders")  # the broker loses the queued create_order message
    stack.restart_orchestrator(**QUICK_STALL)
    dlq = stack.dlq_worker()
    worker = stack.worker()
    try:
        entry = _dead_lettered(stack, order_id, "create_order")
        assert entry["error"].startswith("stalled: no progress")
        stack.shop.wait_order(order_id, ("COMPLETED",))
    finally:
        worker.stop()
        dlq.stop()
        stack.restart_orchestrator()
    assert stack.rt.dead_letters.get(entry_id(order_id, "create_order"))["status"] == "resolved"
    stack.shop.check_invariants([order_id], product, 10, user, 1_000)


def test_completed_order_whose_publication_message_was_lost_is_published_exactly_once(stack):
    # No worker serves the data platform's queue, so the message waits there; then it is
    # purged by hand, as an operator (or a Redis that lost its last writes) might.
    # Every queue but publish_order's, from the declarations (a step on a new service
    # before the pivot is served too, or the order never completes).
    publishing = ORDER.queue_of("publish_order")
    worker = stack.worker(queues=tuple(s for s in SERVICES if s != publishing))
    try:
        user, product = _customer(stack)
        order_id = stack.shop.order(user, product)
        stack.shop.wait_order(order_id, ("COMPLETED",), settle=False)
        wait_for(lambda: stack.rt.redis.llen(publishing), 10, what="the publish message")
        stack.rt.redis.delete(publishing)
        # The DLQ sends its retry to the data platform's queue: a worker serves it now.
        publisher = stack.worker(queues=(publishing,))
        stack.restart_orchestrator(**QUICK_STALL)
        dlq = stack.dlq_worker()
        try:
            entry = _dead_lettered(stack, order_id, "publish_order")
            assert entry["kind"] == "after_pivot"
            assert entry["error"].startswith("stalled: no progress")
            wait_for(lambda: stack.shop.published(order_id) == 1, 30, what="publication")
            wait_for(
                lambda: stack.rt.dead_letters.get(entry["id"])["status"] == "resolved",
                10,
                what="the DLQ entry to close",
            )
        finally:
            dlq.stop()
            publisher.stop()
            stack.restart_orchestrator()
    finally:
        worker.stop()
    assert stack.shop.wait_streamed(order_id) == 1
    order = stack.shop.get_order(order_id)
    assert order["status"] == "COMPLETED"
    assert {s["name"]: s["status"] for s in order["steps"]}["publish_order"] == "succeeded"
    stack.shop.check_invariants([order_id], product, 10, user, 1_000)
