"""The Celery application factory: broker, queues, delivery guarantees, task registry."""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import worker_process_init
from kombu import Queue

from app.saga.definition import QUEUES, SAGA
from compensations.tasks import register_compensations
from config.settings import Settings
from tasks.dispatch import CeleryDispatcher
from tasks.runtime import LazySaga
from tasks.steps import register_steps


def _routes() -> dict:
    routes = {f"saga.{s.name}": {"queue": s.queue} for s in SAGA}
    routes.update(
        {f"compensations.{s.compensation}": {"queue": s.queue} for s in SAGA if s.compensation}
    )
    routes["saga.step_failed"] = {"queue": "orders"}
    routes["coupons.process_issue_request"] = {"queue": "coupons"}
    return routes


def delivery_conf(settings: Settings) -> dict:
    """How every message is delivered; the benchmark's raw chain uses the same, so the
    comparison is fair."""
    return dict(
        task_serializer="json",
        accept_content=["json"],
        # Nobody reads task results: the saga log is the record. No backend, no writes.
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # A message whose task kills its worker every time counts each loss as a retry, so
        # it ends in the DLQ instead of being redelivered forever.
        task_retry_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=[Queue(name) for name in QUEUES],
        task_default_queue="orders",
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout,
            "unacked_restore_interval": settings.broker_restore_interval,
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        enable_utc=True,
    )


def create_celery(settings: Settings) -> Celery:
    app = Celery("saga", broker=settings.redis_url, set_as_current=False)
    app.conf.update(delivery_conf(settings), task_routes=_routes())
    app.lazy_saga = LazySaga(settings, lambda: CeleryDispatcher(app))
    app.dispatcher = CeleryDispatcher(app)
    register_steps(app, settings)
    register_compensations(app, settings)

    @worker_process_init.connect(weak=False)
    def _fresh_runtime_in_child(**_):
        app.lazy_saga.reset()

    logging.getLogger("slack_sdk").setLevel(logging.WARNING)
    return app
