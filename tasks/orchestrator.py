"""The orchestrator process (the Procfile's `orchestrator`): `python -m tasks.orchestrator`.

It keeps the order saga's log in the order service's database from the workers' events,
runs the saga's hooks there (an order's status, its payment), and parks sagas that
stopped moving. It needs REDIS_URL and ORDERS_DATABASE_URL, nothing else.
"""

from __future__ import annotations

from app.bootstrap import HOME, build_runtime
from app.process import run_until_stopped
from config.settings import Settings
from sagaflow import Orchestrator
from tasks.celery_app import create_celery


def build(settings: Settings) -> Orchestrator:
    # It serves the home service only for its database: it runs no step.
    return build_runtime(settings, create_celery(settings).dispatcher, (HOME,)).orchestrator()


def main() -> None:
    run_until_stopped(build, "orchestrator")


if __name__ == "__main__":
    main()
