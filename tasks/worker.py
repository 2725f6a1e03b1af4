"""Entry point for `celery -A tasks.worker ...` (workers and Flower)."""

from app.logs import configure_logging
from config.settings import Settings
from tasks.celery_app import create_celery

settings = Settings.from_env()
configure_logging(settings.log_level, settings.log_format, role="worker")
celery = create_celery(settings)
