"""What every step of the refund saga receives: the completed order as it was paid, and
whether its coupon comes back (the shop's rule, decided once when the refund is asked for,
so that a retried step never decides differently)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict

WORKFLOW = "refund"
# The shop's rule: a coupon comes back with a refund asked for within this many days of
# the order; later, the money and the stock come back but the coupon stays used.
COUPON_COMES_BACK_WITHIN = timedelta(days=14)


class RefundLine(BaseModel):
    model_config = ConfigDict(frozen=True)
    product_id: int
    quantity: int


class RefundContext(BaseModel):
    model_config = ConfigDict(frozen=True)
    order_id: int
    user_id: int
    items: list[RefundLine]
    amount: int  # what the order paid from the balance, all of which comes back
    returned_coupon_id: int | None = None  # None: no coupon, or it stays used (the rule)


def coupon_comes_back(ordered_at: datetime, asked_at: datetime) -> bool:
    if ordered_at.tzinfo is None:  # SQLite hands back naive UTC
        ordered_at = ordered_at.replace(tzinfo=UTC)
    return asked_at - ordered_at <= COUPON_COMES_BACK_WITHIN


def refund_of(order: dict, asked_at: datetime) -> RefundContext:
    """The refund of a completed order (OrderService.request_refund's view of it)."""
    coupon = order["issued_coupon_id"]
    return RefundContext(
        order_id=order["order_id"],
        user_id=order["user_id"],
        items=order["items"],
        amount=order["paid"],
        returned_coupon_id=coupon
        if coupon and coupon_comes_back(order["created_at"], asked_at)
        else None,
    )


def saga_id_of(order_id: int) -> str:
    return f"{WORKFLOW}-{order_id}"


def order_id_of(saga_id: str) -> int:
    return int(saga_id.removeprefix(f"{WORKFLOW}-"))
