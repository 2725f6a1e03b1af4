"""Data platform service: keeps a record of every completed order and every refund, and
streams each (orders on `dataplatform.orders`, refunds on `dataplatform.refunds`).

Step: publish_order (after the order succeeded: retried, never compensated). The record
and its stream event are written in one transaction (the event into the service's outbox);
the step itself puts the event on the Redis stream `dataplatform.orders` right after its
commit (sagaflow._outbox.AfterCommit), or the outbox relay does if it could not; at least once:
consumers dedupe on the entry's `message_id` (or on `order_id`, which every event carries).
Step publish_refund (the refund saga's, after its pivot) works the same way.
"""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import Boolean, DateTime, Integer, Text, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sagaflow import Database, enqueue, outbox_table, stream_message, utcnow

STREAM = "dataplatform.orders"
REFUND_STREAM = "dataplatform.refunds"


class Base(DeclarativeBase):
    pass


class OrderRecord(Base):
    __tablename__ = "order_records"
    order_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(Integer)
    total: Mapped[int] = mapped_column(Integer)
    discount: Mapped[int] = mapped_column(Integer)
    paid: Mapped[int] = mapped_column(Integer)
    items: Mapped[str] = mapped_column(Text)
    # True once its event is in the outbox (the same transaction as the record).
    streamed: Mapped[bool] = mapped_column(Boolean, default=False)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RefundRecord(Base):
    __tablename__ = "refund_records"
    order_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(Integer)
    amount: Mapped[int] = mapped_column(Integer)
    items: Mapped[str] = mapped_column(Text)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


Outbox = outbox_table(Base)


class DataPlatformService:
    def __init__(self, db: Database):
        self.db = db

    def publish(self, order: dict) -> dict:
        """Record the completed order and its stream event, once."""
        with self.db.write() as session:
            record = session.get(OrderRecord, order["order_id"], with_for_update=True)
            if record is not None:
                return {"order_id": record.order_id, "streamed": True, "duplicate": True}
            session.add(
                OrderRecord(
                    order_id=order["order_id"],
                    user_id=order["user_id"],
                    total=order["total"],
                    discount=order["discount"],
                    paid=order["paid"],
                    items=json.dumps(order["items"]),
                    streamed=True,
                )
            )
            fields = {
                "order_id": str(order["order_id"]),
                "user_id": str(order["user_id"]),
                "total": str(order["total"]),
                "paid": str(order["paid"]),
                "items": json.dumps(order["items"]),
            }
            enqueue(session, Outbox, f"order-{order['order_id']}", *stream_message(STREAM, fields))
        return {"order_id": order["order_id"], "streamed": True, "duplicate": False}

    def publish_refund(self, refund: dict) -> dict:
        """Record a refunded order and its stream event, once (an order is refunded once)."""
        order_id = refund["order_id"]
        with self.db.write() as session:
            if session.get(RefundRecord, order_id, with_for_update=True) is not None:
                return {"order_id": order_id, "duplicate": True}
            items = json.dumps(refund["items"])
            session.add(
                RefundRecord(
                    order_id=order_id,
                    user_id=refund["user_id"],
                    amount=refund["amount"],
                    items=items,
                )
            )
            fields = {
                "order_id": str(order_id),
                "user_id": str(refund["user_id"]),
                "amount": str(refund["amount"]),
                "items": items,
            }
            enqueue(session, Outbox, f"refund-{order_id}", *stream_message(REFUND_STREAM, fields))
        return {"order_id": order_id, "duplicate": False}

    def refunds(self, order_id: int) -> int:
        with self.db.read() as session:
            return 0 if session.get(RefundRecord, order_id) is None else 1

    def count(self, order_id: int) -> int:
        with self.db.read() as session:
            return len(
                session.scalars(select(OrderRecord).where(OrderRecord.order_id == order_id)).all()
            )


# What other code reaches as `services.<name>` (app/bootstrap.py), each built on this
# service's database.
INTERFACES = {"dataplatform": DataPlatformService}
