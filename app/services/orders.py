"""Order service: the order (OrderService), its line items (OrderProductService) and its
payment record (OrderPaymentService). The saga log lives in this database too.

Step: create_order (price the items, apply the coupon). Compensation: cancel_order.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    delete,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from app.db import Database
from app.errors import AlreadyCompensated, Conflict, NotFound
from app.ledger import utcnow

PENDING = "PENDING"
COMPLETED = "COMPLETED"
COMPENSATING = "COMPENSATING"
FAILED = "FAILED"
NEEDS_ATTENTION = "NEEDS_ATTENTION"
ORDER_STATUSES = (PENDING, COMPLETED, COMPENSATING, FAILED, NEEDS_ATTENTION)
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


class SagaStep(Base):
    """One row per (order, step or compensation): the saga log."""

    __tablename__ = "saga_steps"
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # step or compensation
    position: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Any write to the row counts as progress (a retry being scheduled too): the stall
    # check reads it, so work that is merely waiting for its retry never looks stuck.
    updated_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True, default=utcnow, onupdate=utcnow
    )


def fingerprint(user_id: int, items: list[dict], issued_coupon_id: int | None) -> str:
    body = json.dumps(
        {"user_id": user_id, "items": items, "coupon": issued_coupon_id}, sort_keys=True
    )
    return hashlib.sha256(body.encode()).hexdigest()


def saga_context(order: Order) -> dict:
    """What every step after create_order needs, as plain JSON (ids and integers)."""
    return {
        "order_id": order.id,
        "user_id": order.user_id,
        "issued_coupon_id": order.issued_coupon_id,
        "items": [
            {"product_id": i.product_id, "quantity": i.quantity, "unit_price": i.unit_price}
            for i in order.items
        ],
        "total": order.total,
        "discount": order.discount,
        "paid": order.paid,
    }


class OrderService:
    def __init__(self, db: Database):
        self.db = db

    def place(
        self,
        user_id: int,
        items: list[dict],
        issued_coupon_id: int | None,
        idempotency_key: str | None,
        plan: list[tuple[str, str]],
    ) -> tuple[dict, bool]:
        """Store a PENDING order and its saga plan. Returns (order, created); the same
        Idempotency-Key (of the same user) returns the first order and created=False."""
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
                for position, (name, kind) in enumerate(plan):
                    session.add(
                        SagaStep(
                            order_id=order.id,
                            name=name,
                            kind=kind,
                            position=position,
                            status="pending",
                            attempts=0,
                        )
                    )
                order_id = order.id
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
            order_id = order.id
        return self.get(order_id)

    def get(self, order_id: int) -> dict:
        with self.db.read() as session:
            order = session.get(Order, order_id)
            if order is None:
                raise NotFound(f"order {order_id} does not exist")
            steps = session.scalars(
                select(SagaStep).where(SagaStep.order_id == order_id).order_by(SagaStep.position)
            ).all()
            payment = session.get(OrderPayment, order_id)
            return {
                "order_id": order.id,
                "user_id": order.user_id,
                "status": order.status,
                "total": order.total,
                "discount": order.discount,
                "paid": order.paid,
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
                "steps": [_step_view(s) for s in steps],
                "created_at": order.created_at.isoformat(),
            }

    def context(self, order_id: int) -> dict:
        with self.db.read() as session:
            order = session.get(Order, order_id)
            if order is None:
                raise NotFound(f"order {order_id} does not exist")
            return saga_context(order)

    def price(self, order_id: int, prices: dict[int, int], discount: int) -> dict:
        """create_order: fix unit prices, total, discount and amount to pay. Idempotent: a
        priced order keeps its first prices. Undone by cancel_order."""
        with self.db.write() as session:
            order = session.get(Order, order_id, with_for_update=True)
            if order is None:
                raise NotFound(f"order {order_id} does not exist")
            if order.status == FAILED:
                raise AlreadyCompensated(f"order {order_id} was already cancelled")
            if order.total is None:
                for item in order.items:
                    item.unit_price = prices[item.product_id]
                order.total = sum(i.unit_price * i.quantity for i in order.items)
                order.discount = min(discount, order.total)
                order.paid = order.total - order.discount
                order.updated_at = utcnow()
            return saga_context(order)

    def cancel(self, order_id: int, reason: str | None) -> str:
        """cancel_order: the order ends FAILED with the reason; a late create_order refuses."""
        with self.db.write() as session:
            order = session.get(Order, order_id, with_for_update=True)
            if order is None:
                raise NotFound(f"order {order_id} does not exist")
            if order.status == FAILED:
                return "nothing to do: already cancelled"
            order.status = FAILED
            order.failure_reason = order.failure_reason or reason
            order.updated_at = utcnow()
            return "order cancelled"

    def discard(self, order_id: int) -> None:
        """Remove an order whose saga never started (the broker refused it), so that the
        request changed nothing and its Idempotency-Key can be used again."""
        with self.db.write() as session:
            for table in (SagaStep, OrderItem):
                session.execute(delete(table).where(table.order_id == order_id))
            session.execute(delete(Order).where(Order.id == order_id))

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


class OrderPaymentService:
    """The order's own record of what it paid: PAID when use_balance succeeds, REFUNDED when
    refund_balance undoes it. Written in the saga log's transaction, so the two agree."""

    @staticmethod
    def record(session, order_id: int, amount: int, status: str) -> None:
        payment = session.get(OrderPayment, order_id)
        if payment is None:
            session.add(OrderPayment(order_id=order_id, amount=amount, status=status))
        else:
            payment.status, payment.updated_at = status, utcnow()


def _step_view(step: SagaStep) -> dict:
    return {
        "name": step.name,
        "kind": step.kind,
        "status": step.status,
        "attempts": step.attempts,
        "error": step.error,
        "detail": step.detail,
        "started_at": step.started_at.isoformat() if step.started_at else None,
        "finished_at": step.finished_at.isoformat() if step.finished_at else None,
    }
