"""The shop's Celery application: the order saga's tasks (sagaflow), the coupon issue task,
and the worker's role.

A worker serves the services whose queues it consumes (`-Q products`; without -Q, every
service's): it builds only their database engines, and refuses to start if one of their
URLs is missing.
"""

from __future__ import annotations

import logging
import sys

from celery import Celery
from celery.signals import celeryd_init

from app.bootstrap import build_runner, warm_up
from app.retryable import RETRYABLE
from app.workflows import SERVICES, WORKFLOWS
from config.settings import Settings
from sagaflow import RetryPolicy
from sagaflow.celery_app import CeleryDispatcher, delivery_conf, install

log = logging.getLogger("saga.worker")


def default_retry(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        max_retries=settings.step_max_retries,
        backoff=settings.step_retry_backoff,
        backoff_max=settings.step_retry_backoff_max,
        jitter=settings.step_retry_jitter,
        soft_time_limit=settings.step_soft_time_limit,
        time_limit=settings.step_time_limit,
    )


def _queues(option) -> tuple[str, ...]:
    if not option:
        return ()
    items = option.split(",") if isinstance(option, str) else option
    return tuple(q.strip() for q in items if q.strip())


def create_celery(settings: Settings) -> Celery:
    app = Celery("saga", broker=settings.redis_url or None, set_as_current=False)
    app.conf.update(
        delivery_conf(
            settings.broker_visibility_timeout,
            settings.broker_restore_interval,
            list(SERVICES),
            settings.worker_start_timeout,
            settings.task_events,
        )
    )
    # Choreography sends one piece of work at a time: each announces the next.
    app.dispatcher = CeleryDispatcher(app, chained=settings.saga_mode != "choreography")
    # Until a worker says which queues it consumes, a process serves what SERVICES says.
    app.served = settings.services
    install(
        app,
        list(WORKFLOWS.values()),
        default_retry(settings),
        lambda: build_runner(settings, app.dispatcher, app.served),
        settings,
        lambda runner: warm_up(runner.deps, settings.worker_start_timeout / 2),
    )
    app.conf.task_routes = {
        **app.conf.task_routes,
        "coupons.process_issue_request": {"queue": "coupons"},
    }

    @app.task(
        bind=True,
        shared=False,
        name="coupons.process_issue_request",
        autoretry_for=RETRYABLE,
        max_retries=None,
        retry_backoff=settings.step_retry_backoff,
        retry_backoff_max=settings.step_retry_backoff_max,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
    )
    def process_issue_request(self, request_id: int) -> dict:
        """Serve one coupon issue request, first come first served."""
        return app.sagas.runner.deps.issue_requests.process(request_id)

    @celeryd_init.connect(weak=False)
    def _serve_the_consumed_queues(options=None, instance=None, **_):
        queues = _queues((options or {}).get("queues"))
        unknown = sorted(set(queues) - set(SERVICES))
        problem = None
        if not queues:
            # No -Q: Celery consumes every queue in task_queues, one per service.
            queues = SERVICES
        if unknown:
            problem = f"unknown queues {', '.join(unknown)}: the services are {', '.join(SERVICES)}"
        else:
            missing = [q for q in queues if not settings.database_urls.get(q)]
            if missing:
                names = ", ".join(f"{q.upper()}_DATABASE_URL" for q in missing)
                problem = f"{names} not set, and this worker consumes {', '.join(missing)}"
            if not settings.redis_url:
                problem = "REDIS_URL is not set"
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            raise SystemExit(2)
        app.served = queues
        if settings.log_format == "json" and instance is not None:
            instance.quiet = True  # no start banner: every line on stdout is a JSON log line
        log.info("worker serves %s", ", ".join(queues))

    return app
