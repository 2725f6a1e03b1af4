"""The tests' own sixth service, shipping, declared the way a shop service is
(app/services/<name>.py): its tables on a `Base` of its own, the runtime's ledger and
outbox beside them, and `INTERFACES`, what a step reaches as `services.shipping`.

It lives in the tests, not in app/services/, so the shop's own workflows (and so
app.workflows.SERVICES) do not name it: tests/test_sixth_service.py declares a workflow
of its own that does.

Its tables are made with `create_all` from `Base` (tests/test_sixth_service.py), not
with an Alembic history: the shop's migrations run per service listed in
app.workflows.SERVICES (app/schema.py keys its metadata by that list, and
migrations/env.py reads it), which a service of the tests is not in. A shop service
would ship `migrations/versions/shipping/shipping_0001_initial.py` instead: the
`shipments` table below, then `sagaflow.schema.create_ledger(op)` and `create_outbox(op)`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Integer, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.errors import BusinessError
from sagaflow import Database, apply_once, compensate_once, ledger_table, outbox_table, utcnow

RESERVED, CANCELLED = "RESERVED", "CANCELLED"
# What one parcel may hold: an order of more units is refused (the business refusal the
# tests turn the saga back with).
MAX_UNITS = 10


class Base(DeclarativeBase):
    pass


class Shipment(Base):
    __tablename__ = "shipments"
    order_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(Integer)
    units: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


Ledger = ledger_table(Base)
Outbox = outbox_table(Base)  # choreography: the events this service's steps announce


class TooBigToShip(BusinessError):
    code = "too_big_to_ship"


class ShippingService:
    def __init__(self, db: Database):
        self.db = db

    def reserve_shipping(self, saga_id: str, order_id: int, user_id: int, units: int) -> dict:
        """Reserve one shipment for the order. Undone by cancel_shipping."""

        def apply(session):
            if units > MAX_UNITS:
                raise TooBigToShip(f"{units} units do not fit one parcel (at most {MAX_UNITS})")
            session.add(Shipment(order_id=order_id, user_id=user_id, units=units, status=RESERVED))
            return {"order_id": order_id}

        return apply_once(self.db, Ledger, saga_id, "reserve_shipping", apply)

    def cancel_shipping(self, saga_id: str) -> str:
        """Cancel exactly the shipment reserve_shipping made for this saga."""

        def undo(session, applied):
            shipment = session.get(Shipment, applied["order_id"], with_for_update=True)
            shipment.status, shipment.updated_at = CANCELLED, utcnow()

        return compensate_once(self.db, Ledger, saga_id, "reserve_shipping", undo)

    def shipments(self, order_id: int) -> list[str]:
        """The statuses of the order's shipments (one at most: the key is the order)."""
        with self.db.read() as session:
            return list(
                session.scalars(select(Shipment.status).where(Shipment.order_id == order_id))
            )


INTERFACES = {"shipping": ShippingService}
