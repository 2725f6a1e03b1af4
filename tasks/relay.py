"""The outbox relay (the Procfile's `relay`): `python -m tasks.relay`.

It sends what the services it serves wrote to their outboxes (a saga's start, the data
platform's stream events, and in choreography every step's event) and marks it sent. It
serves SERVICES (default: every service whose database URL is set), each from its own
database, and Redis.
Several relays may run: they claim rows, never send one twice (sagaflow/_outbox.py).
"""

from __future__ import annotations

from app.bootstrap import OUTBOXES, build_runtime
from app.process import run_until_stopped
from config.settings import Settings
from tasks.celery_app import create_celery


def build(settings: Settings):
    served = settings.services or tuple(s for s in OUTBOXES if settings.database_urls.get(s))
    return build_runtime(settings, create_celery(settings).dispatcher, served).relay()


def main() -> None:
    run_until_stopped(build, "relay")


if __name__ == "__main__":
    main()
