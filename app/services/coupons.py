"""Coupon service: coupon definitions, coupons issued to users, and first-come-first-served
issue requests.

Order saga: step use_coupon, compensation restore_coupon.
Refund saga: step return_coupon, compensation reuse_coupon.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.errors import CannotUndo, CouponUnavailable, NotFound
from sagaflow import Database, apply_once, compensate_once, ledger_table, outbox_table, utcnow

UNUSED, USED = "UNUSED", "USED"
PENDING, ISSUED, REJECTED = "PENDING", "ISSUED", "REJECTED"


class Base(DeclarativeBase):
    pass


class Coupon(Base):
    __tablename__ = "coupons"
    __table_args__ = (CheckConstraint("issued <= quantity", name="never_over_issued"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    discount: Mapped[int] = mapped_column(Integer)
    quantity: Mapped[int] = mapped_column(Integer)
    issued: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class IssuedCoupon(Base):
    __tablename__ = "issued_coupons"
    # At most one coupon of a kind per user, whatever the concurrency.
    __table_args__ = (UniqueConstraint("coupon_id", "user_id", name="one_per_user"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    coupon_id: Mapped[int] = mapped_column(ForeignKey("coupons.id"))
    user_id: Mapped[int] = mapped_column(Integer, index=True)
    status: Mapped[str] = mapped_column(String(16), default=UNUSED)
    order_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class IssueRequest(Base):
    __tablename__ = "issue_requests"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    coupon_id: Mapped[int] = mapped_column(ForeignKey("coupons.id"))
    user_id: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    issued_coupon_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


Ledger = ledger_table(Base)
Outbox = outbox_table(Base)  # choreography: the events this service's steps announce


def _coupon_view(c: Coupon) -> dict:
    return {
        "id": c.id,
        "name": c.name,
        "discount": c.discount,
        "quantity": c.quantity,
        "issued": c.issued,
    }


def _issued_view(c: IssuedCoupon) -> dict:
    return {
        "id": c.id,
        "coupon_id": c.coupon_id,
        "user_id": c.user_id,
        "status": c.status,
        "order_id": c.order_id,
    }


def _request_view(r: IssueRequest) -> dict:
    return {
        "request_id": r.id,
        "coupon_id": r.coupon_id,
        "user_id": r.user_id,
        "status": r.status,
        "reason": r.reason,
        "issued_coupon_id": r.issued_coupon_id,
    }


class CouponService:
    """Coupon definitions."""

    def __init__(self, db: Database):
        self.db = db

    def create(self, name: str, discount: int, quantity: int) -> dict:
        with self.db.write() as session:
            coupon = Coupon(name=name, discount=discount, quantity=quantity, issued=0)
            session.add(coupon)
            session.flush()
            return _coupon_view(coupon)

    def get(self, coupon_id: int) -> dict:
        with self.db.read() as session:
            coupon = session.get(Coupon, coupon_id)
            if coupon is None:
                raise NotFound(f"coupon {coupon_id} does not exist")
            return _coupon_view(coupon)


class IssueRequestService:
    """Requests to be issued a coupon, served first come first served by a worker."""

    def __init__(self, db: Database):
        self.db = db

    def request(self, coupon_id: int, user_id: int) -> dict:
        with self.db.write() as session:
            if session.get(Coupon, coupon_id) is None:
                raise NotFound(f"coupon {coupon_id} does not exist")
            req = IssueRequest(coupon_id=coupon_id, user_id=user_id, status=PENDING)
            session.add(req)
            session.flush()
            return _request_view(req)

    def not_queued(self, request_id: int) -> None:
        """The request could not be handed to a worker: say so rather than stay PENDING."""
        with self.db.write() as session:
            self._reject(session, request_id, "could not be queued; try again")

    def get(self, request_id: int) -> dict:
        with self.db.read() as session:
            req = session.get(IssueRequest, request_id)
            if req is None:
                raise NotFound(f"issue request {request_id} does not exist")
            return _request_view(req)

    def process(self, request_id: int) -> dict:
        """Issue the coupon if one is left and the user has none yet; idempotent."""
        try:
            with self.db.write() as session:
                return self._process(session, request_id)
        except IntegrityError:
            # The user already holds this coupon (a concurrent request won): reject.
            with self.db.write() as session:
                return self._reject(session, request_id, "already issued to this user")

    def _process(self, session, request_id: int) -> dict:
        req = session.get(IssueRequest, request_id, with_for_update=True)
        if req is None:
            raise NotFound(f"issue request {request_id} does not exist")
        if req.status != PENDING:
            return _request_view(req)
        held = session.scalar(
            select(IssuedCoupon.id).where(
                IssuedCoupon.coupon_id == req.coupon_id, IssuedCoupon.user_id == req.user_id
            )
        )
        if held is not None:
            return self._reject(session, request_id, "already issued to this user")
        # The conditional increment is what makes "never more than quantity" hold.
        taken = session.execute(
            update(Coupon)
            .where(Coupon.id == req.coupon_id, Coupon.issued < Coupon.quantity)
            .values(issued=Coupon.issued + 1)
        )
        if taken.rowcount != 1:
            return self._reject(session, request_id, "sold out")
        issued = IssuedCoupon(coupon_id=req.coupon_id, user_id=req.user_id, status=UNUSED)
        session.add(issued)
        session.flush()
        req.status, req.issued_coupon_id, req.processed_at = ISSUED, issued.id, utcnow()
        return _request_view(req)

    def _reject(self, session, request_id: int, reason: str) -> dict:
        req = session.get(IssueRequest, request_id, with_for_update=True)
        if req.status == PENDING:
            req.status, req.reason, req.processed_at = REJECTED, reason, utcnow()
        return _request_view(req)


class IssuedCouponService:
    """Coupons held by users, and their use in orders."""

    def __init__(self, db: Database):
        self.db = db

    def for_user(self, user_id: int) -> list[dict]:
        with self.db.read() as session:
            rows = session.scalars(
                select(IssuedCoupon)
                .where(IssuedCoupon.user_id == user_id)
                .order_by(IssuedCoupon.id)
            )
            return [_issued_view(c) for c in rows]

    def get(self, issued_coupon_id: int) -> dict:
        with self.db.read() as session:
            issued = session.get(IssuedCoupon, issued_coupon_id)
            if issued is None:
                raise NotFound(f"issued coupon {issued_coupon_id} does not exist")
            return _issued_view(issued)

    def discount_for(self, issued_coupon_id: int, user_id: int) -> int:
        """The discount this user's coupon gives. Whether it is still unused is decided when
        use_coupon takes it, so two orders racing for one coupon cannot both get it."""
        with self.db.read() as session:
            discount = session.scalar(
                select(Coupon.discount)
                .join(IssuedCoupon, IssuedCoupon.coupon_id == Coupon.id)
                .where(IssuedCoupon.id == issued_coupon_id, IssuedCoupon.user_id == user_id)
            )
        if discount is None:
            # Another user's coupon and one that does not exist get the same answer.
            raise CouponUnavailable(f"issued coupon {issued_coupon_id} is not one of yours")
        return discount

    def use_coupon(self, saga_id: str, order_id: int, issued_coupon_id: int, user_id: int) -> dict:
        """Mark the user's coupon USED by this order. Undone by restore_coupon."""

        def apply(session):
            taken = session.execute(
                update(IssuedCoupon)
                .where(
                    IssuedCoupon.id == issued_coupon_id,
                    IssuedCoupon.user_id == user_id,
                    IssuedCoupon.status == UNUSED,
                )
                .values(status=USED, order_id=order_id)
            )
            if taken.rowcount != 1:
                raise CouponUnavailable(
                    f"coupon {issued_coupon_id} is used or not held by user {user_id}"
                )
            return {"issued_coupon_id": issued_coupon_id, "order_id": order_id}

        return apply_once(self.db, Ledger, saga_id, "use_coupon", apply)

    def restore_coupon(self, saga_id: str) -> str:
        """Put the coupon this saga's order used back to UNUSED."""

        def undo(session, applied):
            session.execute(
                update(IssuedCoupon)
                .where(
                    IssuedCoupon.id == applied["issued_coupon_id"],
                    # Ledger rows written before it recorded the order: the id is enough.
                    IssuedCoupon.order_id == applied.get("order_id", IssuedCoupon.order_id),
                )
                .values(status=UNUSED, order_id=None)
            )

        return compensate_once(self.db, Ledger, saga_id, "use_coupon", undo)

    # --- the refund saga ------------------------------------------------------------

    def return_coupon(self, saga_id: str, order_id: int, issued_coupon_id: int) -> dict:
        """The coupon a refunded order used can be used again. Undone by reuse_coupon."""

        def apply(session):
            returned = session.execute(
                update(IssuedCoupon)
                .where(
                    IssuedCoupon.id == issued_coupon_id,
                    IssuedCoupon.status == USED,
                    IssuedCoupon.order_id == order_id,
                )
                .values(status=UNUSED, order_id=None)
            )
            if returned.rowcount != 1:
                raise CouponUnavailable(
                    f"coupon {issued_coupon_id} is not the one order {order_id} used"
                )
            return {"issued_coupon_id": issued_coupon_id, "order_id": order_id}

        return apply_once(self.db, Ledger, saga_id, "return_coupon", apply)

    def reuse_coupon(self, saga_id: str) -> str:
        """The refund turned back: the coupon is the order's again."""

        def undo(session, applied):
            taken = session.execute(
                update(IssuedCoupon)
                .where(
                    IssuedCoupon.id == applied["issued_coupon_id"], IssuedCoupon.status == UNUSED
                )
                .values(status=USED, order_id=applied["order_id"])
            )
            if taken.rowcount != 1:
                raise CannotUndo(
                    f"coupon {applied['issued_coupon_id']} was used again since it came back"
                )

        return compensate_once(self.db, Ledger, saga_id, "return_coupon", undo)


# What other code reaches as `services.<name>` (app/bootstrap.py), each built on this
# service's database.
INTERFACES = {
    "coupons": CouponService,
    "issued_coupons": IssuedCouponService,
    "issue_requests": IssueRequestService,
}
