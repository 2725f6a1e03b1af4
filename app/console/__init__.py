"""The operator console: server-rendered pages behind the operator role.

    /console                 orders by status with counts, newest first, search by id
    /console/orders/<id>     one order's saga as a timeline, its failure class, what next,
                             its DLQ entries and what operators did to it
    /console/dlq             the DLQ: entries, their errors and attempts, and the actions
    /console/sagas/<id>/cancel  cancel a saga still in flight: its dry run, then a note

Every action (dry run, requeue, compensate, resolve) goes through a page that shows the
dry-run plan and asks for confirmation; what is done is recorded (who, when, what) and
shown on the order's page. Signing in takes an operator's token once; the console keeps it
in an HttpOnly, SameSite=Strict cookie, and its forms carry a CSRF token.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from urllib.parse import quote

from flask import Blueprint, current_app, redirect, render_template, request
from sqlalchemy import func, select
from werkzeug.exceptions import BadRequest, NotFound

from app.auth import OPERATOR, InvalidCredential
from app.console.explain import bars, explain
from app.http.access import CONSOLE_COOKIE, CSRF_COOKIE, caller, console, public
from app.services.orders import ORDER_STATUSES, Order
from app.workflows import WORKFLOWS, order_id_of
from sagaflow import tracing
from sagaflow.dlq.actions import OperatorActions, Refused
from sagaflow.dlq.store import STATUSES

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates")
PAGE = 50
ACTIONS = ("dry-run", "requeue", "compensate", "resolve")
REQUEUE_WAIT = 15.0


def _services():
    return current_app.extensions["services"]


def _actions() -> OperatorActions:
    runner = current_app.extensions["runner"]
    settings = runner.deps.settings
    return OperatorActions(
        runner.dead_letters,
        runner,
        current_app.extensions["saga_log"],
        settings.dlq_lease_seconds,
    )


@bp.app_template_filter("when")
def _when(epoch_seconds) -> str:
    if not epoch_seconds:
        return ""
    return datetime.fromtimestamp(float(epoch_seconds), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.app_context_processor
def _csrf():
    return {"csrf": request.cookies.get(CSRF_COOKIE, "")}


# --- signing in ---------------------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    """Only a path of the console itself: never an address elsewhere."""
    if target and target.startswith("/console") and "//" not in target and "\\" not in target:
        return target
    return "/console/"


@bp.get("/login")
@public
def login_form():
    return render_template("console/login.html", next=_safe_next(request.args.get("next")))


@bp.post("/login")
@public
def login():
    token = (request.form.get("token") or "").strip()
    target = _safe_next(request.form.get("next"))
    try:
        identity = current_app.extensions["token_verifier"].verify(token)
    except InvalidCredential as exc:
        return render_template("console/login.html", next=target, error=str(exc)), 401
    if identity.role != OPERATOR:
        error = f"a {identity.role} token does not open the console: it needs an operator's"
        return render_template("console/login.html", next=target, error=error), 403
    response = redirect(target, 303)
    secure = request.is_secure
    response.set_cookie(
        CONSOLE_COOKIE, token, httponly=True, samesite="Strict", secure=secure, path="/console"
    )
    response.set_cookie(
        CSRF_COOKIE,
        secrets.token_urlsafe(24),
        httponly=True,
        samesite="Strict",
        secure=secure,
        path="/console",
    )
    return response


@bp.post("/logout")
@console(OPERATOR)
def logout():
    response = redirect("/console/login", 303)
    response.delete_cookie(CONSOLE_COOKIE, path="/console")
    response.delete_cookie(CSRF_COOKIE, path="/console")
    return response


# --- orders ---------------------------------------------------------------------------------


def _search(query: str) -> tuple[int | None, int | None]:
    """`42`, or a saga id such as `order-42` or `refund-42`, is an order id; `user:7` a
    user id."""
    query = query.strip()
    if not query:
        return None, None
    if query.startswith("user:") and query[5:].isascii() and query[5:].isdigit():
        return None, int(query[5:])
    if query.isascii() and query.isdigit() and len(query) <= 10:
        return int(query), None
    of_saga = order_id_of(query) if len(query) <= 40 else None
    if of_saga is not None and of_saga < 10**10:
        return of_saga, None
    raise BadRequest("search by an order id (42, order-42 or refund-42) or a user id (user:7)")


@bp.get("/")
@console(OPERATOR)
def orders():
    status = request.args.get("status") or None
    if status is not None and status not in ORDER_STATUSES:
        raise BadRequest(f"status is one of {', '.join(ORDER_STATUSES)}")
    query = request.args.get("q", "")
    order_id, user_id = _search(query)
    before = request.args.get("before", "")
    if before and not (before.isascii() and before.isdigit()):
        raise BadRequest("before is an order id")
    db = _services().databases["orders"]
    with db.read() as session:
        counts = dict(
            session.execute(select(Order.status, func.count()).group_by(Order.status)).all()
        )
        listing = select(Order).order_by(Order.id.desc()).limit(PAGE + 1)
        if status:
            listing = listing.where(Order.status == status)
        if order_id is not None:
            listing = listing.where(Order.id == order_id)
        if user_id is not None:
            listing = listing.where(Order.user_id == user_id)
        if before:
            listing = listing.where(Order.id < int(before))
        found = [
            {
                "id": o.id,
                "user_id": o.user_id,
                "status": o.status,
                "total": o.total,
                "failed_step": o.failed_step,
                "created_at": o.created_at,
            }
            for o in session.scalars(listing)
        ]
    more = found[PAGE]["id"] + 1 if len(found) > PAGE else None
    return render_template(
        "console/orders.html",
        counts={s: counts.get(s, 0) for s in ORDER_STATUSES},
        total=sum(counts.values()),
        orders=found[:PAGE],
        status=status,
        q=query,
        next_before=found[PAGE - 1]["id"] if more else None,
        who=caller().actor,
    )


@bp.get("/orders/<id:order_id>")
@console(OPERATOR)
def order(order_id: int):
    services = _services()
    try:
        shown = services.orders.get(order_id)
    except Exception as exc:  # NotFound from the domain
        raise NotFound(f"order {order_id} does not exist") from exc
    runner, saga_log, actions = (
        current_app.extensions["runner"],
        current_app.extensions["saga_log"],
        _actions(),
    )
    # Every saga of this order (the order's own, its refund), each keyed by the order id.
    sagas, entries, history = [], [], []
    max_attempts = runner.deps.settings.dlq_max_attempts
    for workflow in WORKFLOWS.values():
        saga_id = workflow.saga_id_for(order_id)
        timeline = saga_log.timeline(saga_id)
        if timeline is None:
            continue
        parked = runner.dead_letters.entries(saga_id=saga_id)
        trace_id = tracing.trace_id_of(timeline.get("traceparent"))
        sagas.append(
            {
                "timeline": timeline,
                "trace_id": trace_id,
                "trace_url": tracing.trace_url(runner.deps.settings.trace_url_template, trace_id),
                "rows": bars(timeline),
                "explanation": explain(timeline, parked, max_attempts),
            }
        )
        entries += parked
        history += actions.history(saga_id)
    return render_template(
        "console/order.html",
        order=shown,
        sagas=sagas,
        entries=entries,
        history=sorted(history, key=lambda h: h["at"]),
        who=caller().actor,
    )


# --- cancelling a saga in flight -----------------------------------------------------------


def _saga_of_an_order(saga_id: str) -> int:
    order_id = order_id_of(saga_id) if len(saga_id) <= 80 else None
    if order_id is None:
        raise NotFound(f"no saga {saga_id!r}")
    return order_id


@bp.get("/sagas/<saga_id>/cancel")
@console(OPERATOR)
def cancel_plan(saga_id: str):
    order_id = _saga_of_an_order(saga_id)
    try:
        plan = _actions().cancel_plan(saga_id)
    except Refused as exc:
        return redirect(f"/console/orders/{order_id}?message={_said(f'refused: {exc}')}", 303)
    return render_template("console/cancel.html", plan=plan, order_id=order_id, who=caller().actor)


@bp.post("/sagas/<saga_id>/cancel")
@console(OPERATOR)
def cancel(saga_id: str):
    order_id = _saga_of_an_order(saga_id)
    try:
        done = _actions().cancel(saga_id, caller().actor, request.form.get("note", ""))
        message = f"cancelling {saga_id}: {', '.join(done['compensations'])}"
    except Refused as exc:
        message = f"refused: {exc}"
    return redirect(f"/console/orders/{order_id}?message={_said(message)}", 303)


# --- the DLQ ------------------------------------------------------------------------------


@bp.get("/dlq")
@console(OPERATOR)
def dlq():
    status = request.args.get("status") or None
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status is one of {', '.join(STATUSES)}")
    entries = current_app.extensions["runner"].dead_letters.entries(status=status)
    return render_template(
        "console/dlq.html",
        entries=list(reversed(entries)),  # the newest first
        status=status,
        order_of=lambda e: order_id_of(e["saga_id"]),
        who=caller().actor,
    )


def _entry(entry_id: str) -> dict:
    entry = current_app.extensions["runner"].dead_letters.get(entry_id)
    if entry is None:
        raise NotFound(f"no DLQ entry {entry_id!r}")
    return entry


@bp.get("/dlq/<path:entry_id>/<any('dry-run', requeue, compensate, resolve):action>")
@console(OPERATOR)
def confirm(entry_id: str, action: str):
    entry = _entry(entry_id)
    return render_template(
        "console/confirm.html",
        entry=entry,
        action=action,
        plan=_actions().plan(entry),
        order_id=order_id_of(entry["saga_id"]),
        who=caller().actor,
    )


@bp.post("/dlq/<path:entry_id>/<any(requeue, compensate, resolve):action>")
@console(OPERATOR)
def act(entry_id: str, action: str):
    entry, actions, who = _entry(entry_id), _actions(), caller().actor
    order_id = order_id_of(entry["saga_id"])
    try:
        if action == "requeue":
            result = actions.requeue(entry, who, REQUEUE_WAIT)
            said = "ok" if result["ok"] else "failed again"
            message = f"requeued {entry_id}: {said}: {result['outcome']}"
        elif action == "compensate":
            launched = actions.compensate(entry, who, force=True)
            message = f"compensating: {', '.join(launched) or 'it had already turned back'}"
        else:
            actions.resolve(entry, who, request.form.get("note", ""))
            message = f"resolved {entry_id}"
    except (Refused, ValueError) as exc:
        return redirect(f"/console/dlq/{entry_id}/{action}?message={_said(f'refused: {exc}')}", 303)
    return redirect(f"/console/orders/{order_id}?message={_said(message)}", 303)


def _said(message: str) -> str:
    return quote(message[:400])
