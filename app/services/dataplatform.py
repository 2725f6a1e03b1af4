"""Data platform service: keeps a record of every completed order and streams it.

Step: publish_order (after the order succeeded: retried, never compensated).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Protocol

from sqlalchemy import Boolean, DateTime, Integer, Text, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.db import Database
from sagaflow.ledger import utcnow

STREAM = "dataplatform.orders"


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
    streamed: Mapped[bool] = mapped_column(Boolean, default=False)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EventStream(Protocol):
    def append(self, fields: dict[str, str]) -> None: ...


class RedisStream:
    """A Redis stream that consumers read with XREAD / XREADGROUP."""

    def __init__(self, redis, name: str = STREAM):
        self.redis, self.name = redis, name

    def append(self, fields: dict[str, str]) -> None:
        self.redis.xadd(self.name, fields)


class DataPlatformService:
    def __init__(self, db: Database, stream: EventStream):
        self.db, self.stream = db, stream

    def publish(self, order: dict) -> dict:
        """Record the completed order once, then put it on the stream (at least once:
        consumers dedupe on order_id, which every event carries)."""
        with self.db.write() as session:
            record = session.get(OrderRecord, order["order_id"], with_for_update=True)
            if record is None:
                record = OrderRecord(
                    order_id=order["order_id"],
                    user_id=order["user_id"],
                    total=order["total"],
                    discount=order["discount"],
                    paid=order["paid"],
                    items=json.dumps(order["items"]),
                    streamed=False,
                )
                session.add(record)
            if record.streamed:
                return {"order_id": record.order_id, "streamed": True, "duplicate": True}
        # Append outside the transaction so a slow Redis never holds a database lock; a
        # crash between here and the flag below re-appends on redelivery (at least once).
        self.stream.append(
            {
                "order_id": str(order["order_id"]),
                "user_id": str(order["user_id"]),
                "total": str(order["total"]),
                "paid": str(order["paid"]),
                "items": json.dumps(order["items"]),
            }
        )
        with self.db.write() as session:
            session.get(OrderRecord, order["order_id"]).streamed = True
        return {"order_id": order["order_id"], "streamed": True, "duplicate": False}

    def count(self, order_id: int) -> int:
        with self.db.read() as session:
            return len(
                session.scalars(select(OrderRecord).where(OrderRecord.order_id == order_id)).all()
            )
