"""Domain errors. A BusinessError is an expected refusal: the order saga never retries it
and turns back (app/order_saga.py declares it so to the saga runtime)."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error the domain raises on purpose."""

    code = "domain_error"
    http_status = 400


class NotFound(DomainError):
    code = "not_found"
    http_status = 404


class Conflict(DomainError):
    code = "conflict"
    http_status = 409


class InvalidRequest(DomainError):
    code = "invalid_request"
    http_status = 422


class BusinessError(DomainError):
    """An expected refusal (nearly every failure): never retried, the saga compensates."""

    code = "business_error"
    http_status = 422


class OutOfStock(BusinessError):
    code = "out_of_stock"


class InsufficientBalance(BusinessError):
    code = "insufficient_balance"


class CouponUnavailable(BusinessError):
    code = "coupon_unavailable"


class UnknownProduct(BusinessError):
    code = "unknown_product"
    http_status = 404


class CannotUndo(DomainError):
    """A compensation that cannot apply now: what it would take back is gone (the stock
    returned by a refund was sold again, the balance it credited was spent). Not a
    business error: it is retried, then waits in the DLQ for a human."""

    code = "cannot_undo"
    http_status = 409
