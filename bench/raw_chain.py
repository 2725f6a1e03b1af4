"""The ceiling: a raw Celery chain of 5 no-op tasks, no database, no saga log, no errbacks.

Run by a worker started like the saga's (`celery -A bench.raw_chain worker -Q orders,
products,balances,coupons,dataplatform -P prefork -c 2`), on the same Redis server (its own
database number, so nothing crosses over). Each of the 5 tasks goes to one of the 5 service
queues, in the saga's order, as the saga's steps do. Delivery settings copy the saga's app
(tasks/celery_app.py): json, acks_late, reject_on_worker_lost, prefetch 1, no result
backend, no task events; `fairness_diff()` checks that they still match.

Like a saga step, each task gets the previous task's return value (a small dict) and
returns it. Nothing reads results, so the last task marks completion itself: it RPUSHes
"<chain id> <time.time()>" to the Redis list DONE_KEY.
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery, chain
from celery.signals import worker_process_init

from app.workflows import SERVICES
from config.settings import Settings
from sagaflow.celery_app import delivery_conf

SETTINGS = Settings.from_env()
QUEUES = SERVICES
DONE_KEY = "bench:raw_chain:done"

CONF = delivery_conf(
    SETTINGS.broker_visibility_timeout, SETTINGS.broker_restore_interval, list(QUEUES)
)
# The settings that decide how much each message costs; compared with the saga's app.
COMPARED = (
    "task_serializer",
    "task_ignore_result",
    "task_acks_late",
    "task_reject_on_worker_lost",
    "worker_prefetch_multiplier",
    "worker_send_task_events",
    "task_send_sent_event",
    "broker_transport_options",
)

app = Celery("bench_raw", broker=os.environ.get("RAW_CHAIN_REDIS_URL"), set_as_current=False)
app.conf.update(CONF)

_client: redis.Redis | None = None


def configure(broker_url: str) -> None:
    """Point this process's app at the benchmark's Redis (the worker reads the env)."""
    app.conf.broker_url = broker_url


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(app.conf.broker_url)
    return _client


@worker_process_init.connect(weak=False)
def _fresh_client(**_):
    global _client
    _client = None  # never reuse the parent's socket after fork


@app.task(name="raw.noop", shared=False, acks_late=True, ignore_result=True)
def noop(ctx: dict) -> dict:
    return ctx


@app.task(name="raw.done", shared=False, acks_late=True, ignore_result=True)
def done(ctx: dict) -> None:
    _redis().rpush(DONE_KEY, f"{ctx['chain']} {time.time():.6f}")


def make_chain(chain_id: int):
    ctx = {"chain": chain_id, "order_id": chain_id, "items": [{"product_id": 1, "quantity": 1}]}
    sigs = [app.signature("raw.noop", args=(ctx,), queue=QUEUES[0])]
    sigs += [app.signature("raw.noop", queue=q) for q in QUEUES[1:-1]]
    sigs.append(app.signature("raw.done", queue=QUEUES[-1]))
    return chain(*sigs)


def fairness_diff() -> dict:
    """Delivery settings that differ between this app and the saga's (empty when fair)."""
    from tasks.celery_app import create_celery

    saga_conf = create_celery(SETTINGS).conf
    return {
        key: {"raw": CONF[key], "saga": saga_conf[key]}
        for key in COMPARED
        if json.dumps(CONF[key], sort_keys=True) != json.dumps(saga_conf[key], sort_keys=True)
    }
