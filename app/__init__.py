"""The Flask app factory: `create_app(settings)` wires the domain to HTTP."""

from __future__ import annotations

from flask import Flask

from config.settings import Settings
from sagaflow import tracing

# The services whose routes the API serves (and whose databases it opens), unless SERVICES
# says otherwise. The data platform has no routes.
API_SERVICES = ("orders", "products", "balances", "coupons")


def create_app(settings: Settings | None = None) -> Flask:
    from app.auth import TokenVerifier
    from app.bootstrap import build_runtime
    from app.console import bp as console_bp
    from app.http import access, limits
    from app.http.body import MAX_BODY_BYTES
    from app.http.converters import IdConverter
    from app.http.errors import register_error_handlers
    from app.http.metrics import bp as metrics_bp
    from app.http.routes import bp
    from tasks.celery_app import create_celery

    settings = settings or Settings.from_env()
    # No static folder: the API and the console serve no files, and Flask's own static
    # route would be a route without an access rule (app/http/access.py refuses those).
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False
    app.url_map.converters["id"] = IdConverter
    celery = create_celery(settings)
    runtime = build_runtime(settings, celery.dispatcher, settings.services or API_SERVICES)
    runner = runtime.runner
    app.extensions["celery"] = celery
    app.extensions["runner"] = runner
    app.extensions["services"] = runner.deps
    app.extensions["saga_log"] = runtime.saga_log
    # The front door of saga starts: POST /orders writes and sends through it.
    app.extensions["starts"] = runtime.starts
    if tracing.enabled():
        # Each request a span (opentelemetry-instrumentation-flask): a saga's trace starts
        # at the POST that asked for it. Probes and scrapes are not traced.
        from opentelemetry.instrumentation.flask import FlaskInstrumentor

        FlaskInstrumentor().instrument_app(
            app, tracer_provider=tracing.provider(), excluded_urls="healthz,metrics"
        )
    register_error_handlers(app)
    app.register_blueprint(bp)
    app.register_blueprint(metrics_bp)
    app.register_blueprint(console_bp)
    limits.install(app, settings)  # wraps the limited routes: after every blueprint
    access.install(app, TokenVerifier(settings.auth_dir))
    return app
