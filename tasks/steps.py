"""The order saga's forward steps: each one call into its own service, nothing else.

A step takes the services this process serves and the saga context, and returns the
context for the next step with one line that says what it did (None: skipped). Each runs
on its service's queue (app/order_saga.py pairs it with its compensation)."""

from __future__ import annotations

from app.order_context import OrderContext, saga_id_of


def _items(ctx: OrderContext) -> list[dict]:
    return [item.model_dump() for item in ctx.items]


def create_order(services, ctx: OrderContext):
    services.orders.confirm(saga_id_of(ctx.order_id), ctx.order_id, _items(ctx), ctx.discount)
    return ctx, f"total={ctx.total} discount={ctx.discount} paid={ctx.paid}"


def decrease_stock(services, ctx: OrderContext):
    taken = services.products.decrease_stock(saga_id_of(ctx.order_id), _items(ctx))
    return ctx, f"took {sum(item['quantity'] for item in taken['items'])} units"


def use_balance(services, ctx: OrderContext):
    services.balances.use_balance(saga_id_of(ctx.order_id), ctx.user_id, ctx.paid)
    return ctx, f"charged {ctx.paid}"


def use_coupon(services, ctx: OrderContext):
    if ctx.issued_coupon_id is None:
        return ctx, None  # None: skipped, nothing to apply or compensate
    services.issued_coupons.use_coupon(
        saga_id_of(ctx.order_id), ctx.order_id, ctx.issued_coupon_id, ctx.user_id
    )
    return ctx, f"coupon {ctx.issued_coupon_id} used"


def publish_order(services, ctx: OrderContext):
    published = services.dataplatform.publish(ctx.model_dump())
    return ctx, "already published" if published["duplicate"] else "published"
