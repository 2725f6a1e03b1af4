"""What each step and compensation does, as one call into its own service.

A step takes the saga context (plain ids and integers) and returns it, with a line that
says what it did. A compensation takes the order id and returns what it undid; it reads
what to undo from its own service's ledger, so it needs nothing else.
"""

from __future__ import annotations

from collections.abc import Callable


def create_order(rt, ctx: dict) -> tuple[dict, str]:
    order = rt.orders.context(ctx["order_id"])
    prices = rt.products.prices([item["product_id"] for item in order["items"]])
    discount = 0
    if order["issued_coupon_id"] is not None:
        discount = rt.issued_coupons.discount_for(order["issued_coupon_id"], order["user_id"])
    priced = rt.orders.price(order["order_id"], prices, discount)
    return priced, f"total={priced['total']} discount={priced['discount']} paid={priced['paid']}"


def decrease_stock(rt, ctx: dict) -> tuple[dict, str]:
    taken = rt.products.decrease_stock(ctx["order_id"], ctx["items"])
    units = sum(item["quantity"] for item in taken["items"])
    return ctx, f"took {units} units"


def use_balance(rt, ctx: dict) -> tuple[dict, str]:
    rt.balances.use_balance(ctx["order_id"], ctx["user_id"], ctx["paid"])
    return ctx, f"charged {ctx['paid']}"


def use_coupon(rt, ctx: dict) -> tuple[dict, str | None]:
    if ctx["issued_coupon_id"] is None:
        return ctx, None  # None: skipped, nothing to apply or compensate
    rt.issued_coupons.use_coupon(ctx["order_id"], ctx["issued_coupon_id"], ctx["user_id"])
    return ctx, f"coupon {ctx['issued_coupon_id']} used"


def publish_order(rt, ctx: dict) -> tuple[dict, str]:
    published = rt.dataplatform.publish(ctx)
    return ctx, "already published" if published["duplicate"] else "published"


def cancel_order(rt, order_id: int) -> str:
    return rt.orders.cancel(order_id, reason=None)


def restore_stock(rt, order_id: int) -> str:
    return rt.products.restore_stock(order_id)


def refund_balance(rt, order_id: int) -> str:
    return rt.balances.refund_balance(order_id)


def restore_coupon(rt, order_id: int) -> str:
    return rt.issued_coupons.restore_coupon(order_id)


FORWARD: dict[str, Callable] = {
    "create_order": create_order,
    "decrease_stock": decrease_stock,
    "use_balance": use_balance,
    "use_coupon": use_coupon,
    "publish_order": publish_order,
}

COMPENSATE: dict[str, Callable] = {
    "cancel_order": cancel_order,
    "restore_stock": restore_stock,
    "refund_balance": refund_balance,
    "restore_coupon": restore_coupon,
}
