"""Bounded history (issue 19, item 4) through the real CLI: finished orders are archived
out of the saga log's hot tables and still found by id, by the API and the console; an
order still moving is never archived."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from sagaflow._log import SagaInstance
from tests.stack import Stack


@pytest.fixture(scope="module")
def stack(primary_backend, tmp_path_factory):
    stack = Stack(primary_backend, tmp_path_factory.mktemp("history")).start()
    try:
        stack.worker()
        yield stack
    finally:
        stack.stop()


def _hot(stack) -> int:
    with stack.rt.databases["orders"].read() as session:
        return session.scalar(select(func.count()).select_from(SagaInstance))


def test_finished_orders_are_archived_and_still_found_by_id(stack):
    shop = stack.shop
    user = shop.new_user(balance=1_000)
    product = shop.product(stock=5, price=100)
    completed = shop.wait_order(shop.order(user, product))
    refused = shop.wait_order(shop.order(user, product, quantity=50))
    assert (completed["status"], refused["status"]) == ("COMPLETED", "FAILED")
    before = shop.snapshot()

    looked = stack.cli("archive", "--older-than", "0s", "--dry-run", "--json")
    assert looked.returncode == 0, looked.stderr
    assert json.loads(looked.stdout)["archivable"] == 2
    assert shop.snapshot() == before

    done = stack.cli("archive", "--older-than", "0s")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("archived 2 sagas")
    assert _hot(stack) == 0
    for order in (completed, refused):
        found = shop.get_order(order["order_id"])
        assert found["status"] == order["status"]
        assert [s["name"] for s in found["steps"]] == [s["name"] for s in order["steps"]]
    console = stack.app.test_client()
    token = stack.credentials.operator["Authorization"].removeprefix("Bearer ")
    console.post("/console/login", data={"token": token, "next": "/console/"})
    page = console.get(f"/console/orders/{completed['order_id']}")
    assert page.status_code == 200 and "publish_order" in page.get_data(as_text=True)

    again = stack.cli("archive", "--older-than", "30d", "--json")
    assert json.loads(again.stdout)["archived"] == 0


def test_an_unreadable_duration_is_one_line_and_changes_nothing(stack):
    before = stack.shop.snapshot()
    for bad in ("30", "thirty-days", "5w", "-1d", "9999999d"):
        result = stack.cli("archive", "--older-than", bad)
        assert result.returncode == 2, (bad, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "duration" in result.stderr
    assert stack.shop.snapshot() == before
