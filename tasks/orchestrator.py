"""The orchestrator process (the Procfile's `orchestrator`): `python -m tasks.orchestrator`.

It keeps the order saga's log in the order service's database from the workers' events,
runs the saga's hooks there (an order's status, its payment), and parks sagas that
stopped moving. It needs REDIS_URL and ORDERS_DATABASE_URL, nothing else.
"""

from __future__ import annotations

from app.bootstrap import HOME, build_outboxes, build_projector, build_runner, build_saga_log
from app.process import run_until_stopped
from config.settings import Settings
from sagaflow.orchestrator import Orchestrator, StallCheck
from tasks.celery_app import create_celery


def build(settings: Settings) -> Orchestrator:
    celery = create_celery(settings)
    # It serves the home service only for its database: it runs no step.
    runner = build_runner(settings, celery.dispatcher, (HOME,))
    home = next(o for o in build_outboxes(runner.deps, settings) if o.service == HOME)
    stall = StallCheck(
        build_saga_log(runner.deps), runner, settings.saga_stall_seconds, home.unsent_keys
    )
    return Orchestrator(build_projector(runner.deps), stall, settings.saga_stall_check_seconds)


def main() -> None:
    run_until_stopped(build)


if __name__ == "__main__":
    main()
