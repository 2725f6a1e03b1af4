"""What the peers' POST /orders does before its workflow starts, the same as the saga's API
(app/http/routes.py `place_order`): check the customer's bearer token, validate the body
with the API's own schema, and quote through the product and coupon services' read
methods (prices; the coupon is the caller's; its discount). Answers are JSON like the
API's; the peers have no other routes but /healthz.

Reads only: none of these methods touches a ledger or an outbox.
"""

from __future__ import annotations

from flask import Flask, jsonify, request
from pydantic import ValidationError

from app.auth import CUSTOMER, InvalidCredential, TokenVerifier
from app.errors import DomainError, InvalidRequest
from app.http.schemas import NewOrder
from app.services.coupons import IssuedCouponService
from app.services.orders import MAX_TOTAL
from app.services.products import ProductService


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


def customer(verifier: TokenVerifier) -> int:
    """The caller's user id, from `Authorization: Bearer <token>` (a customer's)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Refused(401, "unauthorized", "this route needs a credential")
    try:
        identity = verifier.verify(token.strip())
    except InvalidCredential as exc:
        raise Refused(401, "unauthorized", str(exc)) from None
    if identity.role != CUSTOMER:
        raise Refused(403, "forbidden", "customers only")
    return identity.user_id


def new_order(user_id: int) -> NewOrder:
    body = NewOrder.model_validate(request.get_json(silent=True) or {})
    if body.user_id is not None and body.user_id != user_id:
        raise Refused(403, "forbidden", "you may act only as yourself")
    return body


def quote(
    products: ProductService, coupons: IssuedCouponService, body: NewOrder, user_id: int
) -> dict:
    """The order as the saga's API quotes it: lines with unit prices, total, discount, to pay."""
    items = [item.model_dump() for item in body.items]
    prices = products.prices([item["product_id"] for item in items])
    lines = [{**item, "unit_price": prices[item["product_id"]]} for item in items]
    discount = 0
    if body.issued_coupon_id is not None:
        # The saga's API's quote (app/http/routes.py _quote): one query says whose it is
        # and what it takes off.
        discount = coupons.discount_for(body.issued_coupon_id, user_id)
    total = sum(line["unit_price"] * line["quantity"] for line in lines)
    if total > MAX_TOTAL:
        raise InvalidRequest(f"the order's total would exceed {MAX_TOTAL}")
    discount = min(discount, total)
    return {
        "user_id": user_id,
        "items": lines,
        "issued_coupon_id": body.issued_coupon_id,
        "total": total,
        "discount": discount,
        "paid": total - discount,
    }


def install_errors(app: Flask) -> None:
    """The API's answers for what a request can get wrong (app/http/errors.py)."""

    @app.errorhandler(Refused)
    def _refused(exc: Refused):
        return jsonify({"error": {"code": exc.code, "message": str(exc)}}), exc.status

    @app.errorhandler(ValidationError)
    def _invalid(exc: ValidationError):
        return jsonify({"error": {"code": "invalid_request", "message": str(exc)}}), 422

    @app.errorhandler(DomainError)
    def _domain(exc: DomainError):
        return jsonify({"error": {"code": exc.code, "message": str(exc)}}), exc.http_status
