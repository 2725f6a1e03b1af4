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

CLI = "python -m dlq"  # how an alert tells the operator to run the CLI


def build_worker(settings: Settings) -> DeadLetterWorker:
    runner = build_runner(settings, create_celery(settings).dispatcher, ())
    return DeadLetterWorker(runner.dead_letters, runner, SlackAlerter(settings), settings, CLI)


def main() -> None:
    run_until_stopped(build_worker)
