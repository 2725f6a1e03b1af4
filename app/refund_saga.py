"""The refund saga: a customer's refund of a COMPLETED order, the shop's second workflow,
started and run through the same front door as the order saga.

Why this order of steps: what is easiest to take back runs first, and the money last
among the steps that can be undone (the pivot), so that a refund which turns back rarely
has to take a credit out of a balance the customer may already have spent. After the
pivot the order is marked REFUNDED and the refund published; both are retried until they
succeed, never undone.
"""

from __future__ import annotations

from app.errors import BusinessError
from app.refund_context import RefundContext, order_id_of
from app.retryable import RETRYABLE
from app.services.orders import OrderService
from compensations import refund_undo as undo
from sagaflow import Compensation, Hooks, Step, Workflow
from tasks import refund_steps as steps

REFUND = Workflow(
    name="refund",
    context=RefundContext,
    key=lambda ctx: ctx.order_id,  # one refund per order: saga id "refund-42"
    home="orders",
    steps=[
        Step("return_stock", "products", steps.return_stock,
             Compensation("take_back_stock", undo.take_back_stock, event="StockTakenBack"),
             event="StockReturned", failure_event="StockReturnRefused"),
        Step("return_coupon", "coupons", steps.return_coupon,
             Compensation("reuse_coupon", undo.reuse_coupon, event="CouponReused"),
             event="CouponReturned", failure_event="CouponReturnRefused"),
        Step("refund_payment", "balances", steps.refund_payment,
             Compensation("reclaim_payment", undo.reclaim_payment, event="PaymentReclaimed"),
             event="PaymentRefunded", failure_event="PaymentRefundRefused"),
        Step("mark_refunded", "orders", steps.mark_refunded, event="OrderRefunded"),
        Step("publish_refund", "dataplatform", steps.publish_refund, event="RefundPublished"),
    ],
    business_errors=(BusinessError,),
    retryable=RETRYABLE,
)  # fmt: skip


def order_back_to_completed(session, instance, old: str, new: str) -> None:
    """A refund that failed undid what it did: the order is as it was, COMPLETED."""
    if new == "FAILED":
        OrderService.refund_turned_back(session, order_id_of(instance.saga_id))


REFUND_HOOKS = Hooks(on_status=[order_back_to_completed])
