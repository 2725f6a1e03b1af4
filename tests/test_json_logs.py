"""LOG_FORMAT=json (issue 20, item 3) on real processes: the worker, the orchestrator, the
relay and gunicorn write one JSON object per line, each with its time, level and role,
and a step's lines carry its saga id, workflow, step, attempt and task id."""

from __future__ import annotations

import json

import pytest

from tests.stack import Stack
from tests.support import http


@pytest.fixture(scope="module")
def stack(primary_backend, tmp_path_factory):
    stack = Stack(primary_backend, tmp_path_factory.mktemp("json-logs"), LOG_FORMAT="json")
    try:
        stack.start()
        stack.worker()
        yield stack
    finally:
        stack.stop()


def _lines(path) -> list[str]:
    text = path.read_text(errors="replace").splitlines()
    # Celery prints its start banner (not a log line) before logging begins.
    first = next((i for i, line in enumerate(text) if line.startswith("{")), len(text))
    return [line for line in text[first:] if line.strip()]


def test_every_process_writes_json_lines_and_a_steps_lines_name_its_saga(stack):
    api = stack.api()
    try:
        shop = stack.shop
        user = shop.new_user(balance=1_000)
        product = shop.product()
        status, answer = http(
            "POST",
            api.url + "/orders",
            {"items": [{"product_id": product, "quantity": 1}]},
            stack.credentials.customer(user),
        )
        assert status == 202, answer
        order_id = answer["order_id"]
        assert shop.wait_order(order_id)["status"] == "COMPLETED"
    finally:
        api.stop()

    logs = sorted((stack.workdir / "logs").glob("*.log"))
    roles = set()
    records = []
    for path in logs:
        for line in _lines(path):
            record = json.loads(line)  # every line after the banner is one JSON object
            assert record["time"] and record["level"] and record["message"] is not None
            roles.add(record["role"])
            records.append(record)
    assert {"worker", "orchestrator", "relay", "web"} <= roles, roles
    saga_id = f"order-{order_id}"
    steps = {r["step"]: r for r in records if r.get("saga_id") == saga_id and "step" in r}
    assert {"create_order", "use_balance", "publish_order"} <= set(steps), sorted(steps)
    done = next(r for r in records if r.get("saga_id") == saga_id and r.get("task_id"))
    assert done["workflow"] == "order" and done["attempt"] == "1"
