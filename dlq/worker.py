"""The DLQ worker process (the Procfile's `dlq`): `python -m dlq worker`.

It needs REDIS_URL (and Slack's settings) only: it sends parked work back to its service's
queue, where that service's worker runs it (sagaflow/dlq/worker.py).
"""

from __future__ import annotations

from app.bootstrap import build_runner
from app.process import run_until_stopped
from config.settings import Settings
from sagaflow.dlq.alerts import SlackAlerter
from sagaflow.dlq.worker import DeadLetterWorker
from tasks.celery_app import create_celery


def build_worker(settings: Settings) -> DeadLetterWorker:
    runner = build_runner(settings, create_celery(settings).dispatcher, ())
    alerter = SlackAlerter(settings)
    return DeadLetterWorker(runner.dead_letters, runner, alerter, settings, settings.cli_command)


def main() -> None:
    run_until_stopped(build_worker, "dlq-worker")
