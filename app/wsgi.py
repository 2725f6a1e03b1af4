"""Entry point for gunicorn: `gunicorn app.wsgi:app`."""

from app import create_app
from app.logs import configure_logging
from config.settings import Settings
from sagaflow import tracing

settings = Settings.from_env()
configure_logging(settings.log_level, settings.log_format, role="web")
# gunicorn imports this in each worker it forks (no preload): each builds its own exporter.
tracing.configure("web")
app = create_app(settings)
