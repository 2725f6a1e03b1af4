"""The Prometheus metrics add up: what two worker processes (a prefork worker with two
children) did is counted once, in the numbers the API's /metrics serves."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.stack import Stack
from tests.support import wait_for

ORDERS = 8


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack("sqlite", tmp_path_factory.mktemp("metrics"))
    stack.start()
    yield stack
    stack.stop()


def scrape(stack) -> dict:
    response = stack.app.test_client().get("/metrics", headers=stack.credentials.operator)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counts_from_every_worker_process_add_up(stack):
    shop = stack.shop
    worker = stack.worker(concurrency=2, faults="decrease_stock:transient:1")
    try:
        user = shop.new_user(balance=100_000)
        poor = shop.new_user(balance=10)
        product = shop.product(stock=100, price=100)
        done = [shop.order(user, product) for _ in range(ORDERS)]
        refused = shop.order(poor, product)
        for order_id in done:
            shop.wait_order(order_id, ("COMPLETED",))
        shop.wait_order(refused, ("FAILED",))
    finally:
        worker.stop()
    children = {s["worker"] for o in done for s in shop.get_order(o)["steps"] if s["worker"]}
    assert children  # the two children wrote events; the orchestrator counted them

    samples = wait_for(
        lambda: (
            (s := scrape(stack))
            and value(s, "sagaflow_sagas_reached_total", workflow="order", status="FAILED") == 1
            and s
        ),
        30,
        what="the metrics to catch up",
    )
    step = {"workflow": "order", "kind": "step"}
    assert (
        value(samples, "sagaflow_sagas_reached_total", workflow="order", status="COMPLETED")
        == ORDERS
    )
    # Every order's stock step failed once (a retry), then succeeded: counted exactly.
    assert (
        value(
            samples,
            "sagaflow_step_duration_seconds_count",
            step="decrease_stock",
            outcome="ok",
            **step,
        )
        == ORDERS + 1
    )
    assert (
        value(samples, "sagaflow_step_retries_total", workflow="order", step="decrease_stock")
        == ORDERS + 1
    )
    assert (
        value(
            samples,
            "sagaflow_step_failures_total",
            step="use_balance",
            phase="failed",
            error_class="InsufficientBalance",
            **step,
        )
        == 1
    )
    assert value(samples, "sagaflow_dlq_entries", status="retrying") == 0
    assert value(samples, "sagaflow_oldest_stuck_saga_age_seconds") == 0
    assert value(samples, "sagaflow_sagas", status="COMPLETED") == ORDERS


def test_metrics_need_an_operator(stack):
    client = stack.app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=stack.credentials.customer(7)).status_code == 403
