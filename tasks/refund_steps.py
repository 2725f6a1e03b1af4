"""The refund saga's forward steps: each one call into its own service, nothing else
(app/refund_saga.py pairs each with its compensation)."""

from __future__ import annotations

from app.refund_context import RefundContext, saga_id_of


def _items(ctx: RefundContext) -> list[dict]:
    return [item.model_dump() for item in ctx.items]


def return_stock(services, ctx: RefundContext):
    services.products.return_stock(saga_id_of(ctx.order_id), _items(ctx))
    return ctx, f"returned {sum(item.quantity for item in ctx.items)} units"


def return_coupon(services, ctx: RefundContext):
    if ctx.returned_coupon_id is None:
        return ctx, None  # no coupon, or the shop's rule keeps it used: nothing to undo
    services.issued_coupons.return_coupon(
        saga_id_of(ctx.order_id), ctx.order_id, ctx.returned_coupon_id
    )
    return ctx, f"coupon {ctx.returned_coupon_id} usable again"


def refund_payment(services, ctx: RefundContext):
    services.balances.refund_payment(saga_id_of(ctx.order_id), ctx.user_id, ctx.amount)
    return ctx, f"credited {ctx.amount}"


def mark_refunded(services, ctx: RefundContext):
    services.orders.mark_refunded(saga_id_of(ctx.order_id), ctx.order_id)
    return ctx, "order refunded"


def publish_refund(services, ctx: RefundContext):
    published = services.dataplatform.publish_refund(ctx.model_dump())
    return ctx, "already published" if published["duplicate"] else "published"
