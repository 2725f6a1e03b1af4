"""The routes. Each parses its input, makes one domain call, and answers JSON."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import BadRequest

from app.errors import InvalidRequest
from app.http import schemas
from app.http.errors import error_response
from app.services.orders import MAX_TOTAL

bp = Blueprint("api", __name__)
ID = "int(min=1, max=2147483647)"


def _saga():
    return current_app.extensions["saga"]


def _rt():
    return _saga().rt


def _body(model):
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object (Content-Type: application/json)")
    return model.model_validate(data)


@bp.post("/products")
def create_product():
    body = _body(schemas.NewProduct)
    return jsonify(_rt().products.create(body.name, body.price, body.stock)), 201


@bp.get("/products")
def list_products():
    return jsonify(_rt().products.list())


@bp.get(f"/products/<{ID}:product_id>")
def get_product(product_id: int):
    return jsonify(_rt().products.get(product_id))


@bp.post(f"/balances/<{ID}:user_id>/charge")
def charge_balance(user_id: int):
    body = _body(schemas.Charge)
    return jsonify(_rt().balances.charge(user_id, body.amount))


@bp.get(f"/balances/<{ID}:user_id>")
def get_balance(user_id: int):
    return jsonify(_rt().balances.get(user_id))


@bp.post("/coupons")
def create_coupon():
    body = _body(schemas.NewCoupon)
    return jsonify(_rt().coupons.create(body.name, body.discount, body.quantity)), 201


@bp.get(f"/coupons/<{ID}:coupon_id>")
def get_coupon(coupon_id: int):
    return jsonify(_rt().coupons.get(coupon_id))


@bp.post(f"/coupons/<{ID}:coupon_id>/issue")
def issue_coupon(coupon_id: int):
    body = _body(schemas.IssueCoupon)
    issue = _rt().issue_requests.request(coupon_id, body.user_id)
    try:
        _saga().dispatcher.issue_coupon(issue["request_id"])
    except Exception as exc:  # the broker is down: the request must not wait forever
        current_app.logger.error(
            "could not queue coupon request %s: %r", issue["request_id"], str(exc)
        )
        _rt().issue_requests.not_queued(issue["request_id"])
        return error_response(
            503, "broker_unavailable", "the request could not be queued; try again"
        )
    return jsonify({"request_id": issue["request_id"], "status": issue["status"]}), 202


@bp.get(f"/coupons/requests/<{ID}:request_id>")
def get_issue_request(request_id: int):
    return jsonify(_rt().issue_requests.get(request_id))


@bp.get(f"/users/<{ID}:user_id>/coupons")
def user_coupons(user_id: int):
    return jsonify(_rt().issued_coupons.for_user(user_id))


@bp.post("/orders")
def place_order():
    body = _body(schemas.NewOrder)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= 200 and key.isprintable()):
        raise BadRequest("Idempotency-Key must be 1 to 200 printable characters")
    rt = _rt()
    items = [item.model_dump() for item in body.items]
    # Unknown ids are the caller's mistake: refuse them before anything is stored.
    prices = rt.products.prices([item["product_id"] for item in items])
    if sum(prices[i["product_id"]] * i["quantity"] for i in items) > MAX_TOTAL:
        raise InvalidRequest(f"the order's total would exceed {MAX_TOTAL}")
    if body.issued_coupon_id is not None:
        rt.issued_coupons.get(body.issued_coupon_id)
    order, created = rt.orders.place(
        body.user_id, items, body.issued_coupon_id, key, plan=_saga().plan()
    )
    if created:
        try:
            _saga().start(order["order_id"])
        except Exception as exc:  # the broker is down: say so, and don't leave a ghost
            current_app.logger.error(
                "could not start saga order_id=%s error=%r", order["order_id"], str(exc)
            )
            rt.orders.discard(order["order_id"])
            return error_response(
                503, "broker_unavailable", "the order could not be started; try again"
            )
    response = jsonify(
        {
            "order_id": order["order_id"],
            "status": order["status"],
            "links": {"self": f"/orders/{order['order_id']}"},
        }
    )
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return response, 202


@bp.get("/orders")
def list_orders():
    """The newest orders; `?status=NEEDS_ATTENTION` lists what waits for a human."""
    query = schemas.OrderQuery.model_validate(request.args.to_dict())
    return jsonify(_rt().orders.summaries(query.status, query.limit))


@bp.get(f"/orders/<{ID}:order_id>")
def get_order(order_id: int):
    return jsonify(_rt().orders.get(order_id))


@bp.get("/healthz")
def healthz():
    rt = _rt()
    checks = {}
    try:
        rt.redis.ping()
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"error: {type(exc).__name__}"
    for name, db in rt.databases.items():
        try:
            db.ping()
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"error: {type(exc).__name__}"
    healthy = all(value == "ok" for value in checks.values())
    return jsonify({"status": "ok" if healthy else "degraded", "checks": checks}), (
        200 if healthy else 503
    )
