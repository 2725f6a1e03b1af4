"""The refund saga's rules, in-process on SQLite: the declaration, the shop's coupon rule,
who may be refunded, and compensations that refuse to force a negative stock, balance or
a coupon used twice. The end-to-end run is tests/test_refund_saga.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from app.errors import CannotUndo, Conflict, CouponUnavailable
from app.refund_context import COUPON_COMES_BACK_WITHIN, coupon_comes_back, refund_of
from app.refund_saga import REFUND
from app.services import balances, coupons, orders, products
from app.workflows import SERVICES, WORKFLOWS, order_id_of
from sagaflow._db import Database
from sagaflow._log import SagaBase, SagaLog

pytestmark = pytest.mark.rules


def _database(tmp_path, module, *more):
    db = Database(f"sqlite:///{tmp_path / module.__name__.rsplit('.', 1)[-1]}.db", create=True)
    for metadata in (module.Base.metadata, *more):
        metadata.create_all(db.engine)
    return db


# --- the declaration ----------------------------------------------------------------------


def test_the_refund_turns_back_at_its_pivot_with_the_money_last_among_what_can_be_undone():
    assert REFUND.step_names == [
        "return_stock",
        "return_coupon",
        "refund_payment",
        "mark_refunded",
        "publish_refund",
    ]
    assert REFUND.pivot == "refund_payment"
    assert REFUND.compensations_for("refund_payment") == [
        "reclaim_payment",
        "reuse_coupon",
        "take_back_stock",
    ]
    # Its home keeps its saga log with the order's; it needs no service the order lacks.
    assert REFUND.home == "orders" and set(REFUND.services) <= set(SERVICES)


def test_a_saga_id_of_either_workflow_names_its_order():
    assert (order_id_of("order-42"), order_id_of("refund-42")) == (42, 42)
    assert order_id_of("refund-x") is None and order_id_of("shipping-1") is None
    # Every task name is workflow-qualified, so the two never share a Celery task.
    names = [f"{wf.name}.{n}" for wf in WORKFLOWS.values() for n in wf.step_names]
    assert len(names) == len(set(names))


# --- the shop's coupon rule ---------------------------------------------------------------


def test_a_coupon_comes_back_only_within_the_rules_window():
    ordered = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    assert coupon_comes_back(ordered, ordered + COUPON_COMES_BACK_WITHIN)
    assert not coupon_comes_back(ordered, ordered + COUPON_COMES_BACK_WITHIN + timedelta(seconds=1))
    # SQLite hands the order's time back without its zone: it is UTC.
    assert coupon_comes_back(ordered.replace(tzinfo=None), ordered + timedelta(days=1))
    order = {
        "order_id": 7,
        "user_id": 3,
        "paid": 250,
        "issued_coupon_id": 9,
        "items": [{"product_id": 1, "quantity": 2}],
        "created_at": ordered,
    }
    assert refund_of(order, ordered + timedelta(days=1)).returned_coupon_id == 9
    late = refund_of(order, ordered + timedelta(days=15))
    assert (late.returned_coupon_id, late.amount) == (None, 250)


# --- who may be refunded ------------------------------------------------------------------


@pytest.fixture
def order_service(tmp_path):
    db = _database(tmp_path, orders, SagaBase.metadata)
    return orders.OrderService(db), SagaLog(db, WORKFLOWS)


def _place(service: orders.OrderService, status: str) -> int:
    placed, _ = service.place(7, [{"product_id": 1, "quantity": 2}], None, None, lambda *_: None)
    with service.db.write() as session:
        session.execute(
            update(orders.Order).where(orders.Order.id == placed["order_id"]).values(status=status)
        )
    return placed["order_id"]


def _start(started: list[int]):
    def start(session, order):
        SagaLog.create(session, REFUND, refund_of(order, datetime.now(UTC)))
        started.append(order["order_id"])

    return start


def test_only_a_completed_order_is_refunded_and_asking_again_starts_nothing(order_service):
    service, saga_log = order_service
    started: list[int] = []
    pending = _place(service, orders.PENDING)
    with pytest.raises(Conflict, match="only a COMPLETED order"):
        service.request_refund(pending, 7, _start(started))
    assert service.statuses([pending]) == {pending: orders.PENDING} and started == []

    completed = _place(service, orders.COMPLETED)
    answer, created = service.request_refund(completed, 7, _start(started))
    assert (answer["status"], created, started) == (orders.REFUNDING, True, [completed])
    assert saga_log.status(REFUND.saga_id_for(completed)) == "PENDING"
    again, created = service.request_refund(completed, 7, _start(started))
    assert (again["status"], created, started) == (orders.REFUNDING, False, [completed])


def test_a_refund_that_turned_back_is_not_started_twice(order_service):
    service, _ = order_service
    order_id = _place(service, orders.COMPLETED)
    service.request_refund(order_id, 7, _start([]))
    with service.db.write() as session:  # the refund failed: its hook puts the order back
        orders.OrderService.refund_turned_back(session, order_id)
    assert service.statuses([order_id]) == {order_id: orders.COMPLETED}
    with pytest.raises(Conflict, match="already tried"):
        service.request_refund(order_id, 7, _start([]))
    assert service.statuses([order_id]) == {order_id: orders.COMPLETED}


def test_the_order_sagas_late_word_never_hides_a_refund(order_service):
    service, _ = order_service
    order_id = _place(service, orders.COMPLETED)
    service.request_refund(order_id, 7, _start([]))
    with service.db.write() as session:
        orders.OrderService.mirror(session, order_id, orders.COMPLETED, None, None)
    assert service.statuses([order_id]) == {order_id: orders.REFUNDING}


# --- compensations that refuse to force ---------------------------------------------------


def test_stock_sold_again_is_not_taken_back_below_zero(tmp_path):
    service = products.ProductService(_database(tmp_path, products))
    product = service.create("widget", 100, 1)["id"]
    service.return_stock("refund-1", [{"product_id": product, "quantity": 2}])
    assert service.get(product)["stock"] == 3
    service.decrease_stock("order-2", [{"product_id": product, "quantity": 3}])
    with pytest.raises(CannotUndo, match="fewer than 2 left"):
        service.take_back_stock("refund-1")
    assert service.get(product)["stock"] == 0
    service.restore_stock("order-2")  # once there is stock again, the human's retry applies
    assert service.take_back_stock("refund-1") == "undone"
    assert service.get(product)["stock"] == 1
    assert service.take_back_stock("refund-1") == "nothing to do: already compensated"


def test_a_spent_refund_is_not_reclaimed_below_zero(tmp_path):
    service = balances.BalanceService(_database(tmp_path, balances))
    service.charge(5, 100)
    service.use_balance("order-1", 5, 100)
    service.refund_payment("refund-1", 5, 100)
    assert service.refund_payment("refund-1", 5, 100) == {"user_id": 5, "amount": 100}  # once
    assert service.get(5)["balance"] == 100
    service.use_balance("order-2", 5, 60)
    with pytest.raises(CannotUndo, match="already spent"):
        service.reclaim_payment("refund-1")
    assert service.get(5)["balance"] == 40


def test_a_returned_coupon_used_again_is_not_taken_back(tmp_path):
    db = _database(tmp_path, coupons)
    issued = coupons.IssuedCouponService(db)
    coupon = coupons.CouponService(db).create("promo", 10, 5)["id"]
    with db.write() as session:
        row = coupons.IssuedCoupon(coupon_id=coupon, user_id=5)
        session.add(row)
        session.flush()
        coupon_id = row.id
    issued.use_coupon("order-1", 1, coupon_id, 5)
    with pytest.raises(CouponUnavailable):  # not the coupon order 2 used
        issued.return_coupon("refund-2", 2, coupon_id)
    issued.return_coupon("refund-1", 1, coupon_id)
    assert issued.get(coupon_id)["status"] == "UNUSED"
    issued.use_coupon("order-3", 3, coupon_id, 5)
    with pytest.raises(CannotUndo, match="used again"):
        issued.reuse_coupon("refund-1")
    assert issued.get(coupon_id)["order_id"] == 3
