"""How often a client may call: per-client limits (Flask-Limiter), counted in the app's
Redis so that every gunicorn worker and every host count together.

* Failed authentication, per client address (`RATE_LIMIT_FAILED_AUTH`): a request whose
  credential is missing or fails, from an address that failed that often, is answered 429
  instead of 401. A valid credential from the same address is still served: tokens are
  Ed25519 signatures nobody can guess, so refusing the address would protect nothing, and
  would let one broken client behind a shared address (an office, a carrier's NAT) lock
  out everyone behind it. The console's sign-in form is where a credential is tried: like
  any login form, it refuses every attempt from an address over the limit.
* Orders and coupon requests, per signed-in user (`RATE_LIMIT_ORDERS`,
  `RATE_LIMIT_COUPON_REQUESTS`): a route marked `@limited(...)` counts every call, the
  refused ones too, so a flood of malformed orders is limited like one of real ones.

Over a limit: 429 `rate_limited`, the JSON error body, and `Retry-After`: the seconds
until the window lets one more through (a moving window: exact, and a refused request is
not counted, so a client that waits as told is served).

Redis unreachable: `in_memory_fallback_enabled`. Each process goes on counting in its own
memory (the same limits, so a flood stays limited, only per process) and tries Redis again
now and then, with one warning; `swallow_errors` alone would stop limiting and log a
traceback per request. `swallow_errors` is on as well, for what the fallback does not
cover (the sign-in form's count, made after the answer): a limit that cannot be counted
never turns a request into a 500.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from flask import Flask, current_app, g, request
from flask_limiter import Limiter, RateLimitExceeded
from limits import parse_many

from app.http.errors import error_response
from config.settings import Settings, SettingsError

ORDERS, COUPON_REQUESTS, FAILED_AUTH = "orders", "coupon-requests", "failed-auth"
# What a refusal says, by limit.
REFUSED = {
    ORDERS: "too many orders from you",
    COUPON_REQUESTS: "too many coupon requests from you",
    FAILED_AUTH: "too many requests with a missing or failed credential from your address",
}
CONSOLE_SIGN_IN = "console.login"  # its form takes a token (app/console)
# The counts live in the app's Redis under LIMITS:LIMITER/ratelimit/<who>/<limit>/...
KEY_PREFIX = "ratelimit"
# A Redis that does not answer costs a request at most about this long, then the fallback.
REDIS_TIMEOUT = 0.5


def limited(name: str) -> Callable[[Callable], Callable]:
    """The route counts every call against the caller's limit `name` (ORDERS, ...)."""

    def mark(view: Callable) -> Callable:
        view.rate_limit = name
        return view

    return mark


def failed_authentication() -> None:
    """A credential was missing or failed (app/http/access.py, before it answers 401):
    counted against the client's address; over the limit, RateLimitExceeded (a 429)."""
    limits = current_app.extensions.get("rate_limits")  # none in an app made without them
    if limits is not None:
        limits.failed_authentication()


def _client_address() -> str:
    # The peer's address. Behind a proxy (nginx) every client would share the proxy's:
    # have it send X-Forwarded-For and wrap the app in Werkzeug's ProxyFix first.
    return request.remote_addr or "unknown"


def _caller() -> str:
    return g.identity.actor  # set by the access check, which runs before the view


def _setting(name: str, value: str) -> str:
    try:
        parse_many(value)
    except ValueError:
        raise SettingsError(
            f"{name}={value!r} is not a rate limit such as '30/minute' or '30/minute;300/hour'"
        ) from None
    return value


class RateLimits:
    def __init__(self, app: Flask, settings: Settings):
        self.values = {
            FAILED_AUTH: _setting("RATE_LIMIT_FAILED_AUTH", settings.rate_limit_failed_auth),
            ORDERS: _setting("RATE_LIMIT_ORDERS", settings.rate_limit_orders),
            COUPON_REQUESTS: _setting(
                "RATE_LIMIT_COUPON_REQUESTS", settings.rate_limit_coupon_requests
            ),
        }
        self.enabled = settings.rate_limits_enabled
        self.failed_authentication: Callable[[], None] = _uncounted
        if not self.enabled:
            return
        self.limiter = _limiter(app, settings.require_redis())
        # Each request is in the access log already: Flask-Limiter's own line per refusal
        # (at INFO) would double a flood in the log. Its warnings still show.
        logging.getLogger("flask-limiter").setLevel(logging.WARNING)

        # Flask-Limiter counts when a function it decorates is called. A 401 is answered
        # before any view runs, so the access check calls a function of its own, which
        # carries the limit. The limited routes are only marked (`@limited`) and wrapped
        # here, with this app's limiter: each app has its own, on its own Redis.
        def failed_authentication() -> None:
            """Counted by the limit that decorates it; nothing else to do."""

        self.failed_authentication = self._limit(FAILED_AUTH, _client_address)(
            failed_authentication
        )
        for endpoint, view in list(app.view_functions.items()):
            name = getattr(view, "rate_limit", None)
            if name is not None:
                app.view_functions[endpoint] = self._limit(name, _caller)(view)
        if CONSOLE_SIGN_IN in app.view_functions:
            # Tested before the form is read, counted when it answers 401.
            sign_in = self._limit(
                FAILED_AUTH, _client_address, deduct_when=lambda answer: answer.status_code == 401
            )
            app.view_functions[CONSOLE_SIGN_IN] = sign_in(app.view_functions[CONSOLE_SIGN_IN])
        app.register_error_handler(RateLimitExceeded, self._refused)

    def _limit(self, name: str, key: Callable[[], str], **options):
        # Shared: one count per (who, limit) whichever route (the sign-in form and the API
        # share the failed-authentication count of an address).
        return self.limiter.shared_limit(
            self.values[name], scope=name, key_func=key, error_message=REFUSED[name], **options
        )

    def _refused(self, exc: RateLimitExceeded):
        retry_after = self._retry_after(exc)
        response, status = error_response(
            429,
            "rate_limited",
            f"{exc.description} (at most {exc.limit.limit}); try again in {retry_after} s",
        )
        response.headers["Retry-After"] = str(retry_after)
        return response, status

    def _retry_after(self, exc: RateLimitExceeded) -> int:
        """Seconds until the window lets one more request through; the whole window if
        the store cannot say now."""
        try:
            reset_at = self.limiter.current_limit.reset_at
        except Exception:
            return int(exc.limit.limit.get_expiry())
        return max(1, int(reset_at - time.time()))


def _uncounted() -> None:
    """Rate limits are off (RATE_LIMITS_ENABLED=0)."""


def _limiter(app: Flask, redis_url: str) -> Limiter:
    # The `limits` library calls redis-py's unix:// (a socket) redis+unix://.
    if redis_url.startswith("unix://"):
        redis_url = f"redis+{redis_url}"
    limiter = Limiter(
        key_func=_client_address,
        storage_uri=redis_url,
        storage_options={
            "socket_connect_timeout": REDIS_TIMEOUT,
            "socket_timeout": REDIS_TIMEOUT,
        },
        strategy="moving-window",
        key_prefix=KEY_PREFIX,
        in_memory_fallback_enabled=True,
        swallow_errors=True,
        headers_enabled=False,
    )
    try:
        limiter.init_app(app)  # builds the storage from the URL; connects on first use
    except Exception:
        # The storage's own error quotes the whole URL, and so its password: name the
        # scheme only.
        raise SettingsError(
            f"REDIS_URL (scheme {urlsplit(redis_url).scheme!r}) cannot hold the rate limits: "
            "use redis://, rediss:// or unix://, or set RATE_LIMITS_ENABLED=0"
        ) from None
    return limiter


def install(app: Flask, settings: Settings) -> None:
    """After every blueprint is registered: the marked routes are wrapped with their limit."""
    app.extensions["rate_limits"] = RateLimits(app, settings)
