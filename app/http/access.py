"""Every route's access rule, checked before the route runs.

A route declares its rule with `@public` or `@allow(role, ...)`; `install(app)` refuses to
start an app with a route that declares none, so a new route cannot be forgotten. A
customer may be allowed on a route and still see only its own data: the route checks that
with `visible_to_caller(user_id)` and answers 404 for other users' ids, so ids don't leak.

Answers: no or a bad credential 401 (with `WWW-Authenticate: Bearer`), a role the route
does not allow 403, always with the JSON error body.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import quote, urlsplit

from flask import Flask, current_app, g, redirect, request

from app.auth import ADMIN, CUSTOMER, OPERATOR, Identity, InvalidCredential, TokenVerifier
from app.http import limits
from app.http.errors import error_response

PUBLIC = frozenset()
STAFF = (ADMIN, OPERATOR)

log = logging.getLogger("saga.http")


CONSOLE_COOKIE, CSRF_COOKIE = "console_token", "console_csrf"


def public(view: Callable) -> Callable:
    """Anyone may call it: catalogue reads and the health check."""
    view.access_rule = PUBLIC
    return view


def allow(*roles: str) -> Callable[[Callable], Callable]:
    def mark(view: Callable) -> Callable:
        view.access_rule = frozenset(roles)
        return view

    return mark


def console(*roles: str) -> Callable[[Callable], Callable]:
    """A page of the operator console: the credential is the console's cookie (set by its
    login page from a token), and a form it posts carries the CSRF token of the session."""

    def mark(view: Callable) -> Callable:
        view.access_rule = frozenset(roles)
        view.access_by_cookie = True
        return view

    return mark


def caller() -> Identity:
    return g.identity


def is_customer() -> bool:
    return caller().role == CUSTOMER


def visible_to_caller(user_id: int) -> bool:
    """Staff see every user's data; a customer only its own."""
    return not is_customer() or caller().user_id == user_id


def _bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _unauthorized(message: str):
    # Counted against the client's address: over its limit, a 429 instead (limits.py).
    limits.failed_authentication()
    response, status = error_response(401, "unauthorized", message)
    response.headers["WWW-Authenticate"] = 'Bearer realm="order-saga"'
    return response, status


def _to_login():
    return redirect(f"/console/login?next={quote(request.full_path.rstrip('?'))}", 303)


def _same_origin() -> bool:
    """A form posted by the console itself: same Origin (or Referer) host, CSRF token."""
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if source and urlsplit(source).netloc != request.host:
        return False
    expected = request.cookies.get(CSRF_COOKIE)
    return bool(expected) and request.form.get("csrf") == expected


def _check_access():
    view = current_app.view_functions.get(request.endpoint) if request.endpoint else None
    if view is None:
        return None  # no such route: the 404 or 405 answers for itself
    rule = getattr(view, "access_rule", None)
    if rule is None:
        # install() refuses to start an app with such a route; one added after it (by an
        # extension, a late blueprint) is never served, and someone must hear of it.
        log.error("refused %s %s: it has no access rule", request.method, request.endpoint)
        return error_response(404, "not_found", "no such route")
    if rule is PUBLIC:
        return None
    by_cookie = getattr(view, "access_by_cookie", False)
    token = request.cookies.get(CONSOLE_COOKIE) if by_cookie else _bearer_token()
    if token is None:
        if by_cookie:
            return _to_login()
        return _unauthorized("this route needs a credential: Authorization: Bearer <token>")
    try:
        g.identity = current_app.extensions["token_verifier"].verify(token)
    except InvalidCredential as exc:
        if by_cookie:
            return _to_login()
        return _unauthorized(str(exc))
    if by_cookie and request.method == "POST" and not _same_origin():
        return error_response(403, "forbidden", "this form did not come from the console")
    if g.identity.role not in rule:
        allowed = ", ".join(sorted(rule))
        return error_response(
            403, "forbidden", f"a {g.identity.role} may not do this (allowed: {allowed})"
        )
    return None


def install(app: Flask, verifier: TokenVerifier) -> None:
    # Every endpoint, those Flask adds by itself included (its static files route: the app
    # is made with static_folder=None, as it serves no files).
    missing = [
        endpoint
        for endpoint, view in app.view_functions.items()
        if not hasattr(view, "access_rule")
    ]
    if missing:
        raise RuntimeError(f"routes without an access rule: {', '.join(sorted(missing))}")
    app.extensions["token_verifier"] = verifier
    app.before_request(_check_access)
