"""The order saga: the one list that pairs each step with its compensation, and how the
order service reacts to the saga (its hooks). Everything that needs the order of steps
reads ORDER: the Celery tasks and chains, the compensations, the timeline, the DLQ, the
fault names and the README's table.

Adding or removing a step is one entry here plus its service code. The shop's workflows
(this one and the refund) are listed together in app/workflows.py.
"""

from __future__ import annotations

from app.errors import BusinessError
from app.order_context import OrderContext, order_id_of
from app.retryable import RETRYABLE
from app.services.orders import OrderPaymentService, OrderService
from compensations import undo
from sagaflow import Compensation, Event, Hooks, Phase, Step, Workflow
from tasks import steps

ORDER = Workflow(
    name="order",
    context=OrderContext,
    key=lambda ctx: ctx.order_id,
    home="orders",
    # Each step and compensation with the event it announces in choreography (SAGA_MODE).
    steps=[
        Step("create_order", "orders", steps.create_order,
             Compensation("cancel_order", undo.cancel_order, event="OrderCancelled"),
             event="OrderCreated", failure_event="OrderRefused"),
        Step("decrease_stock", "products", steps.decrease_stock,
             Compensation("restore_stock", undo.restore_stock, event="StockRestored"),
             event="StockDecreased", failure_event="StockRefused"),
        Step("use_balance", "balances", steps.use_balance,
             Compensation("refund_balance", undo.refund_balance, event="BalanceRefunded"),
             event="BalanceUsed", failure_event="BalanceRefused"),
        Step("use_coupon", "coupons", steps.use_coupon,
             Compensation("restore_coupon", undo.restore_coupon, event="CouponRestored"),
             event="CouponUsed", failure_event="CouponRefused"),
        # After the order succeeded: a failure is retried, never compensated.
        Step("publish_order", "dataplatform", steps.publish_order, event="OrderPublished"),
    ],
    business_errors=(BusinessError,),
    retryable=RETRYABLE,
)  # fmt: skip


def mirror_order_status(session, instance, old: str, new: str) -> None:
    """The order's status is its saga's, with why it stopped."""
    OrderService.mirror(
        session, order_id_of(instance.saga_id), new, instance.failed_step, instance.failure_reason
    )


def record_payment(session, instance, event: Event) -> None:
    """The order's own record of what it paid, from the balance step and its undo."""
    if event.phase != Phase.SUCCEEDED:
        return
    order_id = order_id_of(instance.saga_id)
    if event.name == "use_balance" and event.ctx is not None:
        OrderPaymentService.record(session, order_id, event.ctx["paid"], "PAID")
    elif event.name == "refund_balance" and event.detail == "undone":
        OrderPaymentService.record(session, order_id, 0, "REFUNDED")


ORDER_HOOKS = Hooks(on_status=[mirror_order_status], on_step=[record_payment])
