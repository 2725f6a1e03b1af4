"""Every error leaves as JSON: {"error": {"code", "message"}}; bad input is never a 500,
and neither is a database that cannot be used now (a 503 with Retry-After)."""

from __future__ import annotations

import logging

from flask import Flask, current_app, jsonify, request
from pydantic import ValidationError
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from werkzeug.exceptions import HTTPException

from app.errors import DomainError
from app.http.body import BODY_READ_ERRORS, unreadable_body

log = logging.getLogger("saga.http")

# A database that cannot serve the request now: the server refused or dropped the
# connection, the pool had none to give in time, or the statement failed for a reason of
# the server's (a lock or statement timeout, a deadlock). None is the request's fault, each
# may pass: a 503 with Retry-After, never a 500.
DATABASE_ERRORS = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,  # the pool's: no connection free within its timeout
)
DATABASE_RETRY_AFTER = 5  # seconds


def error_response(status: int, code: str, message: str, details=None):
    body = {"error": {"code": code, "message": message}}
    if details:
        body["error"]["details"] = details
    return jsonify(body), status


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ValidationError)
    def _invalid(exc: ValidationError):
        details = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        return error_response(422, "invalid_request", "the request body is not valid", details)

    @app.errorhandler(DomainError)
    def _domain(exc: DomainError):
        return error_response(exc.http_status, exc.code, str(exc))

    def _unreadable(exc: Exception):
        # A body that Werkzeug's form parser (the console's forms) could not read.
        return error_response(400, "bad_request", unreadable_body(exc))

    for error in BODY_READ_ERRORS:
        app.register_error_handler(error, _unreadable)

    def _database_unavailable(exc: Exception):
        service = _service_of(exc)
        what = f"the {service} database" if service else "a database of this service"
        # One line per request, no traceback: an outage fails every request alike. Neither
        # the URL nor the path is logged (a path could carry a line break).
        log.error(
            "database unavailable: %s %s needs %s: %s",
            request.method,
            request.endpoint,
            what,
            _reason(exc),
        )
        response, status = error_response(
            503,
            "database_unavailable",
            f"{what} cannot be used now; try again in {DATABASE_RETRY_AFTER} s",
        )
        response.headers["Retry-After"] = str(DATABASE_RETRY_AFTER)
        return response, status

    for error in DATABASE_ERRORS:
        app.register_error_handler(error, _database_unavailable)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        return error_response(exc.code or 500, code, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; see the server log")


def _databases() -> dict:
    return current_app.extensions["services"].databases


def _service_of(exc: BaseException) -> str | None:
    """Which service's database failed. SQLAlchemy's errors do not say which engine raised
    them; the engine, connection or pool is found in the frames the error went through."""
    owners = {}
    for name, db in _databases().items():
        # A SQLite database has a reader engine beside its writer (sagaflow/_db.py).
        for engine in {db.engine, getattr(db, "_reader", db.engine)}:
            owners[id(engine)] = owners[id(engine.pool)] = name
    tb = exc.__traceback__
    while tb is not None:
        held = tb.tb_frame.f_locals.get("self")
        try:
            found = owners.get(id(held)) or owners.get(id(getattr(held, "engine", None)))
        except Exception:  # a property that cannot be read here: not one of ours
            found = None
        if found:
            return found
        tb = tb.tb_next
    return None


def _reason(exc: BaseException) -> str:
    """The driver's own first line (its error names the host and port, never the URL),
    with every database password of this process blotted out all the same."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    text = f"{type(orig).__name__}: {lines[0] if lines else ''}"[:300]
    for db in _databases().values():
        password = make_url(db.url).password
        if password:
            text = text.replace(str(password), "***")
    return text
