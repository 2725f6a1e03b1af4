"""The order saga's compensations, each named as the inverse of its step: one call into the
step's service, which reads what to undo from its own ledger, keyed by the saga id."""

from __future__ import annotations

from app.order_context import order_id_of


def cancel_order(services, saga_id: str) -> str:
    return services.orders.cancel(saga_id, order_id_of(saga_id))


def restore_stock(services, saga_id: str) -> str:
    return services.products.restore_stock(saga_id)


def refund_balance(services, saga_id: str) -> str:
    return services.balances.refund_balance(saga_id)


def restore_coupon(services, saga_id: str) -> str:
    return services.issued_coupons.restore_coupon(saga_id)
