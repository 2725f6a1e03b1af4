"""Every error leaves as JSON: {"error": {"code", "message"}}; bad input is never a 500."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from app.errors import DomainError
from app.http.body import BODY_READ_ERRORS, unreadable_body

log = logging.getLogger("saga.http")


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

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        return error_response(exc.code or 500, code, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; see the server log")
