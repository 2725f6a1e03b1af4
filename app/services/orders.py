"""Order service: the order (OrderService), its line items and its payment record
(OrderPaymentService). The order saga's log lives in this database too (sagaflow's own
tables: the order service is the workflow's home).

Order saga: step create_order (fix the quoted prices on the order), compensation
cancel_order. An order's status mirrors its saga's, set by the saga's hooks
(app/order_saga.py), until a refund is asked for.
Refund saga: the request marks the order REFUNDING with the saga's start; step
mark_refunded (after the refund's pivot) makes it REFUNDED; a refund that turns back
leaves it COMPLETED again (the refund saga's hook).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from app.errors import Conflict, NotFound
from sagaflow import Database, apply_once, compensate_once, ledger_table, outbox_table, utcnow

PENDING = "PENDING"
COMPLETED = "COMPLETED"
COMPENSATING = "COMPENSATING"
FAILED = "FAILED"
NEEDS_ATTENTION = "NEEDS_ATTENTION"
REFUNDING = "REFUNDING"
REFUNDED = "REFUNDED"
ORDER_STATUSES = (PENDING, COMPLETED, COMPENSATING, FAILED, NEEDS_ATTENTION, REFUNDING, REFUNDED)
# Once a refund is asked for, the order's status is the refund's, not its own saga's.
REFUND_STATUSES = (REFUNDING, REFUNDED)
MAX_TOTAL = 2**31 - 1  # money columns are 32-bit integers on PostgreSQL


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    # An Idempotency-Key is the client's own: two users' keys never collide.
    __table_args__ = (
        UniqueConstraint("user_id", "idempotency_key", name="uq_orders_user_idempotency_key"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(Integer, index=True)
    status: Mapped[str] = mapped_column(String(20), default=PENDING, index=True)
    issued_coupon_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    total: Mapped[int | None] = mapped_column(Integer, nullable=True)
    discount: Mapped[int | None] = mapped_column(Integer, nullable=True)
    paid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    failed_step: Mapped[str | None] = mapped_column(String(40), nullable=True)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    items: Mapped[list[OrderItem]] = relationship(order_by="OrderItem.id", lazy="selectin")


class OrderItem(Base):
    __tablename__ = "order_items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    product_id: Mapped[int] = mapped_column(Integer)
    quantity: Mapped[int] = mapped_column(Integer)
    unit_price: Mapped[int | None] = mapped_column(Integer, nullable=True)


class OrderPayment(Base):
    __tablename__ = "order_payments"
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), primary_key=True)
    amount: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))  # PAID or REFUNDED
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


Ledger = ledger_table(Base)
# What the order service must send, written with the change that calls for it: a saga's
# start, with the order that starts it.
Outbox = outbox_table(Base)


def fingerprint(user_id: int, items: list[dict], issued_coupon_id: int | None) -> str:
    body = json.dumps(
        {"user_id": user_id, "items": items, "coupon": issued_coupon_id}, sort_keys=True
    )
    return hashlib.sha256(body.encode()).hexdigest()


class OrderService:
    def __init__(self, db: Database):
        self.db = db

    def place(
        self,
        user_id: int,
        items: list[dict],
        issued_coupon_id: int | None,
        idempotency_key: str | None,
        start_saga: Callable[[object, int], None],
    ) -> tuple[dict, bool]:
        """Store a PENDING order; `start_saga(session, order_id)` records its saga in the
        same transaction. Returns (order, created); the same Idempotency-Key (of the same
        user) returns the first order and created=False."""
        print_ = fingerprint(user_id, items, issued_coupon_id)
        if idempotency_key:
            existing = self._by_key(user_id, idempotency_key, print_)
            if existing is not None:
                return existing, False
        try:
            with self.db.write() as session:
                order = Order(
                    user_id=user_id,
                    issued_coupon_id=issued_coupon_id,
                    status=PENDING,
                    idempotency_key=idempotency_key,
                    request_fingerprint=print_,
                )
                order.items = [
                    OrderItem(product_id=i["product_id"], quantity=i["quantity"]) for i in items
                ]
                session.add(order)
                session.flush()
                order_id = order.id
                start_saga(session, order_id)
        except IntegrityError:
            # A concurrent request with the same key won the race: answer with its order.
            existing = self._by_key(user_id, idempotency_key, print_) if idempotency_key else None
            if existing is None:
                raise
            return existing, False
        # The caller needs only the id and status: don't read back what was just written.
        return {"order_id": order_id, "status": PENDING}, True

    def _by_key(self, user_id: int, key: str, print_: str) -> dict | None:
        with self.db.read() as session:
            order = session.scalar(
                select(Order).where(Order.user_id == user_id, Order.idempotency_key == key)
            )
            if order is None:
                return None
            if order.request_fingerprint != print_:
                raise Conflict("Idempotency-Key was already used for a different order")
            return {"order_id": order.id, "status": order.status}

    def get(self, order_id: int) -> dict:
        with self.db.read() as session:
            order = session.get(Order, order_id)
            if order is None:
                raise NotFound(f"order {order_id} does not exist")
            payment = session.get(OrderPayment, order_id)
            return {
                "order_id": order.id,
                "user_id": order.user_id,
                "status": order.status,
                "total": order.total,
                "discount": order.discount,
                # What the quote asks for, and what was actually taken (null: nothing, or
                # it was refunded): a refused order never shows an amount as paid.
                "to_pay": order.paid,
                "paid": payment.amount if payment and payment.status == "PAID" else None,
                "issued_coupon_id": order.issued_coupon_id,
                "failed_step": order.failed_step,
                "failure_reason": order.failure_reason,
                "payment": {"amount": payment.amount, "status": payment.status}
                if payment
                else None,
                "items": [
                    {"product_id": i.product_id, "quantity": i.quantity, "unit_price": i.unit_price}
                    for i in order.items
                ],
                "created_at": order.created_at.isoformat(),
            }

    def confirm(self, saga_id: str, order_id: int, items: list[dict], discount: int) -> dict:
        """create_order: fix the quoted unit prices, total, discount and amount to pay.
        Idempotent (the ledger); refuses once cancelled. Undone by cancel_order."""

        def apply(session):
            order = session.get(Order, order_id, with_for_update=True)
            if order is None:
                raise NotFound(f"order {order_id} does not exist")
            prices = {i["product_id"]: i["unit_price"] for i in items}
            for item in order.items:
                item.unit_price = prices[item.product_id]
            order.total = sum(i.unit_price * i.quantity for i in order.items)
            order.discount = min(discount, order.total)
            order.paid = order.total - order.discount
            order.updated_at = utcnow()
            return {"total": order.total, "discount": order.discount, "paid": order.paid}

        return apply_once(self.db, Ledger, saga_id, "create_order", apply)

    def cancel(self, saga_id: str, order_id: int) -> str:
        """cancel_order: the order is cancelled; a late create_order refuses (the ledger)."""

        def undo(session, _applied):
            order = session.get(Order, order_id, with_for_update=True)
            order.updated_at = utcnow()

        outcome = compensate_once(self.db, Ledger, saga_id, "create_order", undo)
        return "order cancelled" if outcome == "undone" else outcome

    def statuses(self, order_ids: list[int]) -> dict[int, str]:
        with self.db.read() as session:
            rows = session.execute(select(Order.id, Order.status).where(Order.id.in_(order_ids)))
            return {row.id: row.status for row in rows}

    def summaries(self, status: str | None, limit: int, user_id: int | None = None) -> list[dict]:
        """The newest orders, optionally only those in one status (e.g. NEEDS_ATTENTION)
        or of one user."""
        query = select(Order).order_by(Order.id.desc()).limit(limit)
        if status is not None:
            query = query.where(Order.status == status)
        if user_id is not None:
            query = query.where(Order.user_id == user_id)
        with self.db.read() as session:
            return [
                {
                    "order_id": o.id,
                    "user_id": o.user_id,
                    "status": o.status,
                    "failed_step": o.failed_step,
                    "failure_reason": o.failure_reason,
                    "links": {"self": f"/orders/{o.id}"},
                }
                for o in session.scalars(query)
            ]

    # --- the refund saga ------------------------------------------------------------

    def request_refund(
        self, order_id: int, user_id: int, start_refund: Callable[[object, dict], None]
    ) -> tuple[dict, bool]:
        """Mark a COMPLETED order of `user_id` REFUNDING (another user's is NotFound, so
        ids do not leak); `start_refund(session, order)` records the
        refund saga in the same transaction. Returns (order, created); asking again while
        it is refunding or once refunded returns it with created=False."""
        try:
            with self.db.write() as session:
                order = session.get(Order, order_id, with_for_update=True)
                if order is None or order.user_id != user_id:
                    raise NotFound(f"order {order_id} does not exist")
                if order.status in REFUND_STATUSES:
                    return {"order_id": order.id, "status": order.status}, False
                if order.status != COMPLETED:
                    raise Conflict(
                        f"order {order_id} is {order.status}: only a COMPLETED order can be"
                        " refunded"
                    )
                order.status, order.updated_at = REFUNDING, utcnow()
                start_refund(session, self._refund_view(order))
        except IntegrityError:
            # Its refund saga exists: a concurrent request won, or an earlier refund
            # turned back (one refund per order; what is left is the support desk's).
            status = self.statuses([order_id]).get(order_id)
            if status in REFUND_STATUSES:
                return {"order_id": order_id, "status": status}, False
            raise Conflict(
                f"a refund of order {order_id} was already tried and turned back; see its"
                " timeline or ask support"
            ) from None
        return {"order_id": order_id, "status": REFUNDING}, True

    @staticmethod
    def _refund_view(order: Order) -> dict:
        return {
            "order_id": order.id,
            "user_id": order.user_id,
            "paid": order.paid or 0,
            "issued_coupon_id": order.issued_coupon_id,
            "items": [{"product_id": i.product_id, "quantity": i.quantity} for i in order.items],
            "created_at": order.created_at,
        }

    def mark_refunded(self, saga_id: str, order_id: int) -> dict:
        """mark_refunded: after the refund's pivot (the money is back), never undone."""

        def apply(session):
            order = session.get(Order, order_id, with_for_update=True)
            order.status, order.updated_at = REFUNDED, utcnow()
            payment = session.get(OrderPayment, order_id)
            if payment is not None:
                payment.status, payment.updated_at = "REFUNDED", utcnow()
            return {"order_id": order_id}

        return apply_once(self.db, Ledger, saga_id, "mark_refunded", apply)

    @staticmethod
    def refund_turned_back(session, order_id: int) -> None:
        """The refund saga failed and undid what it did: the order is COMPLETED again."""
        session.execute(
            update(Order)
            .where(Order.id == order_id, Order.status == REFUNDING)
            .values(status=COMPLETED, updated_at=utcnow())
        )

    # --- kept in step with the saga (its hooks, in the orchestrator's transaction) ------

    @staticmethod
    def mirror(session, order_id: int, status: str, failed_step, failure_reason) -> None:
        session.execute(
            update(Order)
            # A late word of the order saga (its publication retried) never hides a refund.
            .where(Order.id == order_id, Order.status.not_in(REFUND_STATUSES))
            .values(
                status=status,
                failed_step=failed_step,
                failure_reason=failure_reason,
                updated_at=utcnow(),
            )
        )


class OrderPaymentService:
    """The order's own record of what it paid: PAID when use_balance succeeds, REFUNDED when
    refund_balance undoes it. Written by the saga's hooks, with the saga log."""

    @staticmethod
    def record(session, order_id: int, amount: int, status: str) -> None:
        payment = session.get(OrderPayment, order_id)
        if payment is None:
            session.add(OrderPayment(order_id=order_id, amount=amount, status=status))
        else:
            payment.status, payment.updated_at = status, utcnow()


# What other code reaches as `services.<name>` (app/bootstrap.py), each built on this
# service's database.
INTERFACES = {"orders": OrderService}
