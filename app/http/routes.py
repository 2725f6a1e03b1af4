"""The routes. Each declares who may call it, parses its input, makes one domain call, and
answers JSON. Ids in paths are ASCII digits (`<id:...>`, app/http/converters.py)."""

from __future__ import annotations

import contextlib

from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import BadRequest, Forbidden

from app.auth import ADMIN, CUSTOMER
from app.errors import InvalidRequest, NotFound
from app.http import schemas
from app.http.access import STAFF, allow, caller, is_customer, public, visible_to_caller
from app.http.body import json_object
from app.http.errors import error_response
from app.http.limits import COUPON_REQUESTS, ORDERS, limited
from app.order_context import OrderContext, saga_id_of
from app.order_saga import ORDER
from app.refund_context import refund_of
from app.refund_saga import REFUND
from app.services.orders import MAX_TOTAL
from sagaflow import utcnow

bp = Blueprint("api", __name__)
ANYONE_SIGNED_IN = (CUSTOMER, *STAFF)


def _rt():
    """The services this process serves (app/bootstrap.py)."""
    return current_app.extensions["services"]


def _one_moment(*databases) -> contextlib.ExitStack:
    """A snapshot of each of these databases (the orders' and the saga log's are one in
    the shop): their reads inside see one moment (sagaflow Database.snapshot)."""
    held = contextlib.ExitStack()
    for db in {id(db): db for db in databases}.values():
        held.enter_context(db.snapshot())
    return held


def _runner():
    return current_app.extensions["runner"]


def _body(model, empty_ok: bool = False):
    return model.model_validate(json_object(request, empty_ok=empty_ok))


def _only_self(named_user_id: int | None) -> int:
    """The caller's user id; a body that names another user is refused."""
    me = caller().user_id
    if named_user_id is not None and named_user_id != me:
        raise Forbidden(f"you may act only as yourself (user {me}), not as user {named_user_id}")
    return me


def _own(record: dict, not_found: str) -> dict:
    """A user's record, or 404 (never 403) when it is another user's: ids don't leak."""
    if not visible_to_caller(record["user_id"]):
        raise NotFound(not_found)
    return record


@bp.post("/products")
@allow(ADMIN)
def create_product():
    body = _body(schemas.NewProduct)
    return jsonify(_rt().products.create(body.name, body.price, body.stock)), 201


@bp.get("/products")
@public
def list_products():
    return jsonify(_rt().products.list())


@bp.get("/products/<id:product_id>")
@public
def get_product(product_id: int):
    return jsonify(_rt().products.get(product_id))


@bp.post("/balances/<id:user_id>/charge")
@allow(ADMIN)
def charge_balance(user_id: int):
    body = _body(schemas.Charge)
    return jsonify(_rt().balances.charge(user_id, body.amount))


@bp.get("/balances/<id:user_id>")
@allow(*ANYONE_SIGNED_IN)
def get_balance(user_id: int):
    if not visible_to_caller(user_id):
        raise NotFound(f"user {user_id} has no balance account")
    return jsonify(_rt().balances.get(user_id))


@bp.post("/coupons")
@allow(ADMIN)
def create_coupon():
    body = _body(schemas.NewCoupon)
    return jsonify(_rt().coupons.create(body.name, body.discount, body.quantity)), 201


@bp.get("/coupons/<id:coupon_id>")
@public
def get_coupon(coupon_id: int):
    return jsonify(_rt().coupons.get(coupon_id))


@bp.post("/coupons/<id:coupon_id>/issue")
@allow(CUSTOMER)
@limited(COUPON_REQUESTS)
def issue_coupon(coupon_id: int):
    user_id = _only_self(_body(schemas.IssueCoupon, empty_ok=True).user_id)
    issue = _rt().issue_requests.request(coupon_id, user_id)
    try:
        current_app.extensions["celery"].send_task(
            "coupons.process_issue_request", args=(issue["request_id"],), queue="coupons"
        )
    except Exception as exc:  # the broker is down: the request must not wait forever
        current_app.logger.error(
            "could not queue coupon request %s: %r", issue["request_id"], str(exc)
        )
        _rt().issue_requests.not_queued(issue["request_id"])
        response, status = error_response(
            503, "broker_unavailable", "the request could not be queued; try again"
        )
        response.headers["Retry-After"] = "5"
        return response, status
    return jsonify({"request_id": issue["request_id"], "status": issue["status"]}), 202


@bp.get("/coupons/requests/<id:request_id>")
@allow(*ANYONE_SIGNED_IN)
def get_issue_request(request_id: int):
    missing = f"issue request {request_id} does not exist"
    return jsonify(_own(_rt().issue_requests.get(request_id), missing))


@bp.get("/users/<id:user_id>/coupons")
@allow(*ANYONE_SIGNED_IN)
def user_coupons(user_id: int):
    if not visible_to_caller(user_id):
        raise NotFound(f"user {user_id} does not exist")
    return jsonify(_rt().issued_coupons.for_user(user_id))


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= 200 and key.isascii() and key.isprintable()):
        raise BadRequest("Idempotency-Key must be 1 to 200 printable ASCII characters")
    return key


@bp.post("/orders")
@allow(CUSTOMER)
@limited(ORDERS)
def place_order():
    body = _body(schemas.NewOrder)
    user_id = _only_self(body.user_id)
    key = _idempotency_key()
    rt = _rt()
    items = [item.model_dump() for item in body.items]
    # Unknown ids and another user's coupon are the caller's mistake: refuse them before
    # anything is stored or any saga starts. The quote comes from the product and coupon
    # services' own interfaces; the saga carries it, so no step reads their databases.
    lines, discount = _quote(items, body.issued_coupon_id, user_id)
    total = sum(line["unit_price"] * line["quantity"] for line in lines)
    if total > MAX_TOTAL:
        raise InvalidRequest(f"the order's total would exceed {MAX_TOTAL}")
    discount = min(discount, total)
    start = current_app.extensions["starts"].start(ORDER)

    def start_saga(session, order_id: int) -> None:
        # In the order's own transaction: the order and its saga commit together or not
        # at all (sagaflow/_starts.py).
        start.write(
            session,
            OrderContext(
                order_id=order_id,
                user_id=user_id,
                items=lines,
                issued_coupon_id=body.issued_coupon_id,
                total=total,
                discount=discount,
                paid=total - discount,
            ),
        )

    order, created = rt.orders.place(user_id, items, body.issued_coupon_id, key, start_saga)
    answer = {
        "order_id": order["order_id"],
        "status": order["status"],
        "links": {"self": f"/orders/{order['order_id']}"},
    }
    return _accepted(answer, start, created, "order")


def _accepted(answer: dict, start, created: bool, what: str):
    """202 for a saga's start: sent now, or left to the outbox relay when the broker is
    down (said in `start`); a repeat of the same request is marked as a replay."""
    if created and not start.send():
        answer["start"] = (
            f"queued: the broker cannot be reached now; the {what} starts when it returns"
        )
    response = jsonify(answer)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return response, 202


def _quote(items: list[dict], issued_coupon_id: int | None, user_id: int):
    prices = _rt().products.prices([item["product_id"] for item in items])
    lines = [{**item, "unit_price": prices[item["product_id"]]} for item in items]
    discount = 0
    if issued_coupon_id is not None:
        # Whose it is is refused now (one query); whether it is still unused is decided
        # by use_coupon (two orders may race for it).
        discount = _rt().issued_coupons.discount_for(issued_coupon_id, user_id)
    return lines, discount


@bp.get("/orders")
@allow(*ANYONE_SIGNED_IN)
def list_orders():
    """The newest orders (a customer's own only); `?status=NEEDS_ATTENTION` lists what
    waits for a human."""
    query = schemas.OrderQuery.model_validate(request.args.to_dict())
    only_user = caller().user_id if is_customer() else None
    return jsonify(_rt().orders.summaries(query.status, int(query.limit), only_user))


@bp.get("/orders/<id:order_id>")
@allow(*ANYONE_SIGNED_IN)
def get_order(order_id: int):
    saga_log = current_app.extensions["saga_log"]
    # The order's row and its sagas' as of one moment: never a status from one commit and
    # steps from the next.
    with _one_moment(_rt().orders.db, saga_log.db):
        order = _own(_rt().orders.get(order_id), f"order {order_id} does not exist")
        timeline = saga_log.timeline(saga_id_of(order_id))
        refund = saga_log.timeline(REFUND.saga_id_for(order_id))
    order["saga_id"] = saga_id_of(order_id)
    order["steps"] = timeline["steps"] if timeline else []
    order["refund"] = (
        None
        if refund is None
        else {
            "saga_id": refund["saga_id"],
            "status": refund["status"],
            "failed_step": refund["failed_step"],
            "failure_reason": refund["failure_reason"],
            "steps": refund["steps"],
        }
    )
    return jsonify(order)


@bp.post("/orders/<id:order_id>/refund")
@allow(CUSTOMER)
@limited(ORDERS)
def refund_order(order_id: int):
    """A customer's refund of their own COMPLETED order: the refund saga (app/refund_saga.py).
    Asking again while it runs, or once refunded, answers the same (nothing new starts)."""
    start = current_app.extensions["starts"].start(REFUND)
    order, created = _rt().orders.request_refund(
        order_id,
        caller().user_id,
        lambda session, completed: start.write(session, refund_of(completed, utcnow())),
    )
    answer = {
        "order_id": order_id,
        "status": order["status"],
        "refund": {"saga_id": REFUND.saga_id_for(order_id)},
        "links": {"self": f"/orders/{order_id}"},
    }
    return _accepted(answer, start, created, "refund")


@bp.get("/healthz")
@public
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
