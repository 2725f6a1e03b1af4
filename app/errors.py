"""Domain errors. Each says how the saga treats it: compensate, retry, or stop."""

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


class InjectedBusinessError(BusinessError):
    """Raised by fault injection (SAGA_FAULTS) to drill the compensation path."""

    code = "injected_business_error"


class AlreadyCompensated(DomainError):
    """A late step arrived after its compensation ran: it must not apply, and nothing else
    needs to happen (the saga already moved on)."""

    code = "already_compensated"
    http_status = 409


class TransientError(Exception):
    """An infrastructure hiccup that may succeed on a second try: retried with backoff."""


class StepTimeout(TransientError):
    """A step overran its time budget."""
