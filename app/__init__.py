"""The Flask app factory: `create_app(settings)` wires the domain to HTTP."""

from __future__ import annotations

from flask import Flask

from config.settings import Settings


def create_app(settings: Settings | None = None) -> Flask:
    from app.auth import TokenVerifier
    from app.bootstrap import build_runtime
    from app.http import access
    from app.http.body import MAX_BODY_BYTES
    from app.http.converters import IdConverter
    from app.http.errors import register_error_handlers
    from app.http.routes import bp
    from app.saga.orchestrator import Saga
    from tasks.celery_app import create_celery

    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False
    app.url_map.converters["id"] = IdConverter
    celery = create_celery(settings)
    app.extensions["saga"] = Saga(build_runtime(settings), celery.dispatcher)
    app.extensions["celery"] = celery
    register_error_handlers(app)
    app.register_blueprint(bp)
    access.install(app, TokenVerifier(settings.auth_dir))
    return app
