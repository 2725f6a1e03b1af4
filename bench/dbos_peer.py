"""The DBOS Transact peer: the same order workflow as a DBOS durable workflow, run the way
DBOS's docs show (`@DBOS.workflow()` calling `@DBOS.step()`s, started in the background
from the request handler with `DBOS.start_workflow`, the workflow id the saga id).

- POST /orders does what the saga's API does before a saga starts (bench/peer_api.py: the
  token, the body, the same quote reads), stores the PENDING order with OrderService.place
  (the saga's API writes its saga log and outbox row in that transaction; here the
  workflow's start is DBOS's own row, written by start_workflow before the 202), and
  starts the workflow.
- The workflow runs the saga's own four compensable steps (app/order_saga.py ORDER:
  create_order, decrease_stock, use_balance, use_coupon), each one business transaction in
  its own service's database with its (saga, step) ledger row, exactly the saga's code;
  on a refusal the compensations of the steps that applied run newest first (the saga's
  own compensations, also ledgered), then the status write FAILED. After use_coupon: the
  status write COMPLETED (the order's status and payment record, in the orders database),
  then publish_order: the data-platform record (keyed by order id, as the saga's) and its
  stream entry XADDed by the step itself; DBOS's checkpoint takes the place of the
  saga's outbox and relay.
- Steps retry what the saga retries (RETRYABLE), as often (STEP_MAX_RETRIES), never a
  business refusal.
- DBOS's checkpoints go to its own system database, DBOS_SYSTEM_DATABASE_URL: a database
  of its own on the same PostgreSQL server, or a SQLite file beside the services' files.
  On SQLite it gets the shop's own settings (sagaflow/_db.py: WAL, synchronous=NORMAL), not
  DBOS's default rollback journal that syncs every commit. The bench migrates it before
  the web processes start (DBOS.migrate), so they do not race to create it.

Served by gunicorn with config/gunicorn.py, like the API: 2 worker processes x 16 request
threads, and in each worker a DBOS executor (launched in create_app, after the fork) that
runs each workflow on a thread of its own. Each worker is its own DBOS executor id.
"""

from __future__ import annotations

import json
import os

from dbos import DBOS, DBOSConfig, SetWorkflowID

from app.bootstrap import Services
from app.errors import BusinessError
from app.order_context import OrderContext, saga_id_of
from app.order_saga import ORDER
from app.retryable import RETRYABLE
from app.services.dataplatform import STREAM, OrderRecord
from app.services.orders import COMPLETED, FAILED, OrderPaymentService, OrderService
from app.workflows import SERVICES
from config.settings import Settings

SETTINGS = Settings.from_env()
APP_NAME = "bench-order"


class _Process:
    services: Services | None = None  # built in create_app, after gunicorn's fork


def _step(name: str):
    """A DBOS step that retries what the saga's steps retry, as many times."""
    return DBOS.step(
        name=name,
        retries_allowed=True,
        max_attempts=SETTINGS.step_max_retries + 1,
        interval_seconds=max(1, SETTINGS.step_retry_backoff),
        backoff_rate=2.0,
        should_retry=lambda exc: isinstance(exc, RETRYABLE),
    )


def _forward(step):
    def run(ctx: dict) -> None:
        step.action(_Process.services, OrderContext.model_validate(ctx))

    return _step(step.name)(run)


def _backward(compensation):
    def run(saga_id: str) -> str:
        return compensation.undo(_Process.services, saga_id)

    return _step(compensation.name)(run)


# The saga's compensable steps, in its order, each with its compensation.
FORWARD = [(s.name, _forward(s), _backward(s.compensation)) for s in ORDER.steps if s.compensation]


@_step("finish")
def finish(order_id: int, status: str, failed_step, reason, paid: int) -> None:
    """The order's final status (what the saga's hooks write with its log)."""
    with _Process.services.databases["orders"].write() as session:
        OrderService.mirror(session, order_id, status, failed_step, reason)
        if status == COMPLETED:
            OrderPaymentService.record(session, order_id, paid, "PAID")


@_step("publish_order")
def publish_order(ctx: dict) -> None:
    """The data-platform record, once (its primary key, as the saga's), then its stream
    entry (at least once: consumers dedupe on order_id, as with the saga's relay)."""
    services = _Process.services
    items = json.dumps(ctx["items"])
    with services.databases["dataplatform"].write() as session:
        if session.get(OrderRecord, ctx["order_id"], with_for_update=True) is None:
            session.add(
                OrderRecord(
                    order_id=ctx["order_id"],
                    user_id=ctx["user_id"],
                    total=ctx["total"],
                    discount=ctx["discount"],
                    paid=ctx["paid"],
                    items=items,
                    streamed=True,
                )
            )
    fields = {k: str(ctx[k]) for k in ("order_id", "user_id", "total", "paid")}
    fields.update(items=items, message_id=f"order-{ctx['order_id']}")
    services.redis.xadd(STREAM, fields)


@DBOS.workflow(name="order")
def order_workflow(ctx: dict) -> str:
    saga_id = saga_id_of(ctx["order_id"])
    applied = []
    for name, forward, backward in FORWARD:
        try:
            forward(ctx)
        except BusinessError as exc:
            for undo in reversed(applied):
                undo(saga_id)
            finish(ctx["order_id"], FAILED, name, str(exc), 0)
            return FAILED
        applied.append(backward)
    finish(ctx["order_id"], COMPLETED, None, None, ctx["paid"])
    publish_order(ctx)
    return COMPLETED


# --- the system database -----------------------------------------------------------------


EXECUTOR_THREADS = 8


def system_engine(url: str):
    """On SQLite, the shop's own settings (sagaflow/_db.py) plus what DBOS's engine sets."""
    if not url.startswith("sqlite"):
        return None  # DBOS builds its PostgreSQL engine itself
    from sqlalchemy import create_engine, event

    engine = create_engine(url, pool_size=20, max_overflow=0, pool_timeout=30)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = "IMMEDIATE"  # as DBOS's own SQLite engine
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")
        dbapi_conn.execute("PRAGMA busy_timeout=30000")
        dbapi_conn.execute("PRAGMA foreign_keys=ON")

    return engine


def config(url: str, executor_id: str | None = None, migrate: bool = False) -> DBOSConfig:
    cfg: DBOSConfig = {
        "name": APP_NAME,
        "system_database_url": url,
        "application_version": "bench",  # both web processes: one version
        "run_migrations": migrate,
        # DBOS runs every started workflow on a thread of its own, unbounded by default:
        # 150 at once would wait on the databases' connection pools until POSTs time out.
        # Bounded like the saga's worker (a few at a time per process); the rest wait in
        # DBOS's executor, already recorded as started.
        "max_executor_threads": EXECUTOR_THREADS,
        "sys_db_pool_size": 10,
    }
    engine = system_engine(url)
    if engine is not None:
        cfg["system_database_engine"] = engine
    if executor_id:
        cfg["executor_id"] = executor_id
    return cfg


def migrate(url: str) -> None:
    """Create DBOS's tables once, from the bench process, before the web processes start."""
    if url.startswith("sqlite"):
        # DBOS.migrate builds its own engine: set WAL first, it stays with the file.
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    DBOS.migrate(url)


# --- the web process ---------------------------------------------------------------------


def create_app():
    """gunicorn 'bench.dbos_peer:create_app()': one DBOS executor per worker process."""
    from flask import Flask, jsonify

    from app.auth import TokenVerifier
    from bench import peer_api

    # Each of the bounded workflow threads and request threads holds one connection at a
    # time: a few resident per database, more borrowed in a burst.
    settings = SETTINGS.with_overrides(
        redis_url=os.environ["DBOS_PEER_REDIS_URL"], db_pool_size=2, db_max_overflow=14
    )
    services = _Process.services = Services(settings, SERVICES)
    DBOS(config=config(os.environ["DBOS_SYSTEM_DATABASE_URL"], f"bench-{os.getpid()}"))
    DBOS.launch()
    verifier = TokenVerifier(settings.auth_dir)
    web = Flask("dbos_peer")
    peer_api.install_errors(web)

    @web.post("/orders")
    def order():
        user_id = peer_api.customer(verifier)
        body = peer_api.new_order(user_id)
        ctx = peer_api.quote(services.products, services.issued_coupons, body, user_id)
        items = [item.model_dump() for item in body.items]
        placed, _ = services.orders.place(
            user_id, items, body.issued_coupon_id, None, lambda _session, _order_id: None
        )
        ctx["order_id"] = placed["order_id"]
        with SetWorkflowID(saga_id_of(ctx["order_id"])):
            DBOS.start_workflow(order_workflow, ctx)
        return jsonify({"order_id": ctx["order_id"], "status": placed["status"]}), 202

    @web.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    return web
