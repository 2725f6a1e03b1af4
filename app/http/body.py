"""Reading a request body strictly: a JSON object, at most MAX_BODY_BYTES however it is
sent, with no duplicate keys, no NaN or Infinity, and no nesting deep enough to exhaust
the parser. Anything else is a 4xx with the JSON error body, before a route sees it."""

from __future__ import annotations

import json

from flask import Request
from gunicorn.http.errors import NoMoreData, ParseException
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge

MAX_BODY_BYTES = 64 * 1024
# gunicorn reads a chunked body only as the app asks for it, so a malformed one (a bad chunk
# size or extension, a missing CRLF, a body cut short) raises where the app reads it. It is
# the client's framing that is wrong: a 400. raw_body() turns them, and any OSError of the
# read, into one; app/http/errors.py answers the same when Werkzeug's form parser reads.
BODY_READ_ERRORS = (ParseException, NoMoreData)


class _DuplicateKey(ValueError):
    pass


def _object_without_duplicates(pairs: list[tuple[str, object]]) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            # Two values for one field would silently take the last: refuse instead.
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _no_constants(name: str):
    raise ValueError(f"{name} is not a JSON number")


def raw_body(request: Request) -> bytes:
    """The body, refused with 413 when over the limit, with or without Content-Length.

    Werkzeug stops reading a body without Content-Length (chunked) at the limit and
    returns what it read as if it were all; reading one byte past the limit from the
    server's stream tells a body that is exactly the limit from one that is longer."""
    if request.content_length is not None:
        if request.content_length > MAX_BODY_BYTES:
            raise RequestEntityTooLarge()
        return request.get_data(cache=True)
    stream = request.environ.get("wsgi.input")
    if stream is None:
        return b""
    try:
        data = stream.read(MAX_BODY_BYTES + 1)
    except (*BODY_READ_ERRORS, OSError) as exc:
        raise BadRequest(unreadable_body(exc)) from None
    if len(data) > MAX_BODY_BYTES:
        raise RequestEntityTooLarge()
    return data


def unreadable_body(exc: BaseException) -> str:
    # The error's name only: its text quotes the client's bytes.
    return f"the body could not be read: malformed or cut short ({type(exc).__name__})"


def json_object(request: Request, empty_ok: bool = False) -> dict:
    """The body as a JSON object; `empty_ok` lets an empty body stand for `{}`."""
    data = raw_body(request)
    if empty_ok and not data.strip():
        return {}
    if request.mimetype != "application/json":
        raise BadRequest("the body must be a JSON object (Content-Type: application/json)")
    try:
        text = data.decode("utf-8")
        value = json.loads(
            text, object_pairs_hook=_object_without_duplicates, parse_constant=_no_constants
        )
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8") from None
    except RecursionError:
        raise BadRequest("the body is nested too deeply") from None
    except _DuplicateKey as exc:
        raise BadRequest(f"the body names the field {str(exc)[:40]!r} twice") from None
    except ValueError:
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object (Content-Type: application/json)")
    return value
