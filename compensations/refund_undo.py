"""The refund saga's compensations, each the inverse of its step: one call into the step's
service, which reads what to undo from its own ledger, keyed by the saga id. Each may find
what it would take back gone (sold, spent, used again): it raises CannotUndo, and the DLQ
keeps it for a human."""

from __future__ import annotations


def take_back_stock(services, saga_id: str) -> str:
    return services.products.take_back_stock(saga_id)


def reuse_coupon(services, saga_id: str) -> str:
    return services.issued_coupons.reuse_coupon(saga_id)


def reclaim_payment(services, saga_id: str) -> str:
    return services.balances.reclaim_payment(saga_id)
