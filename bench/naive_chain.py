"""The naive chain: the order's five business transactions as the plain Celery chain a team
writes first, with none of the saga's machinery. It is the floor this design can reach.

Five tasks, one per service queue in the saga's order, each one local transaction on its
own service's database and tables (the same ones the saga uses), written here as plain
ORM statements because the domain services' step methods bring the ledger in:

  create_order    INSERT the order (PENDING, the quoted total) and its lines   orders
  decrease_stock  UPDATE products SET stock = stock - q WHERE stock >= q      products
  use_balance     UPDATE balances SET balance = balance - paid WHERE ...      balances
  use_coupon      UPDATE issued_coupons SET status = 'USED' WHERE UNUSED      coupons
  publish_order   INSERT the data-platform record, then XADD its stream event dataplatform

No events, no saga log, no ledger, no outbox, no errbacks, no retries: a refusal (stock,
balance, coupon) raises and the chain stops where it is, with nothing undone. Nothing
records that the order finished either (its row stays PENDING): a chain that got through
use_coupon is this peer's COMPLETED, the same step whose success makes a saga COMPLETED.
publish_order writes the stream entry itself (what the saga's relay does from its
outbox), so both put the same entry on the same kind of stream.

The delivery settings are the saga's (sagaflow.celery_app.delivery_conf: json, acks_late,
reject_on_worker_lost, prefetch 1, no result backend, no task events unless a monitor
turns them on). The worker is started like the saga's (`celery -A bench.naive_chain
worker -Q orders,products,balances,coupons,dataplatform -P prefork -c 2`), on the same
Redis server (database 2: NAIVE_REDIS_URL).

POST /orders is `create_app()` under gunicorn (config/gunicorn.py, like the API): the API's
token check, body validation and quote (bench/peer_api.py), then the chain is sent and the
answer is 202 with a request key. For the bench's clock, use_coupon and publish_order each
RPUSH "<key> <time.time()>" to a Redis list after their commit (COMPLETED_KEY,
PUBLISHED_KEY): two Redis commands per order that are the bench's, not the chain's.
"""

from __future__ import annotations

import json
import os
import time
import uuid

import redis
from celery import Celery, chain
from celery.signals import worker_process_init
from sqlalchemy import insert, update

from app.errors import CouponUnavailable, InsufficientBalance, OutOfStock
from app.order_saga import ORDER
from app.services.balances import Balance
from app.services.coupons import UNUSED, USED, IssuedCoupon
from app.services.dataplatform import STREAM, OrderRecord
from app.services.orders import PENDING, Order, OrderItem
from app.services.products import Product
from config.settings import Settings
from sagaflow import Database
from sagaflow.celery_app import delivery_conf

SETTINGS = Settings.from_env()
# Each task's queue is that of the saga step it stands for (the one of the same name, see
# STEPS): read from ORDER, not SERVICES, which would also name services of steps this
# peer does not have (a step on a new service, added to ORDER only) and pair the five
# tasks with the wrong queues.
STEP_NAMES = ("create_order", "decrease_stock", "use_balance", "use_coupon", "publish_order")
QUEUES = tuple(ORDER.queue_of(name) for name in STEP_NAMES)
COMPLETED_KEY, PUBLISHED_KEY = "bench:naive:completed", "bench:naive:published"

app = Celery("bench_naive", broker=os.environ.get("NAIVE_REDIS_URL"), set_as_current=False)
app.conf.update(
    delivery_conf(
        SETTINGS.broker_visibility_timeout, SETTINGS.broker_restore_interval, list(QUEUES)
    )
)


class _Child:
    """What one worker child holds: a Database per service, one Redis client."""

    databases: dict[str, Database] = {}
    redis: redis.Redis | None = None


@worker_process_init.connect(weak=False)
def _open(**_):
    # After the fork: never share the parent's connections.
    _Child.databases = {name: Database(SETTINGS.database_url(name)) for name in QUEUES}
    _Child.redis = redis.Redis.from_url(app.conf.broker_url)


def _db(name: str) -> Database:
    return _Child.databases[name]


def _mark(key: str, ctx: dict) -> None:
    _Child.redis.rpush(key, f"{ctx['request']} {time.time():.6f}")


@app.task(name="naive.create_order", acks_late=True, ignore_result=True)
def create_order(ctx: dict) -> dict:
    with _db("orders").write() as session:
        order_id = session.execute(
            insert(Order).values(
                user_id=ctx["user_id"],
                status=PENDING,
                issued_coupon_id=ctx["issued_coupon_id"],
                total=ctx["total"],
                discount=ctx["discount"],
                paid=ctx["paid"],
                idempotency_key=ctx["request"],
            )
        ).inserted_primary_key[0]
        session.execute(
            insert(OrderItem),
            [
                {
                    "order_id": order_id,
                    "product_id": i["product_id"],
                    "quantity": i["quantity"],
                    "unit_price": i["unit_price"],
                }
                for i in ctx["items"]
            ],
        )
    return {**ctx, "order_id": order_id}


@app.task(name="naive.decrease_stock", acks_late=True, ignore_result=True)
def decrease_stock(ctx: dict) -> dict:
    with _db("products").write() as session:
        for item in sorted(ctx["items"], key=lambda i: i["product_id"]):
            taken = session.execute(
                update(Product)
                .where(Product.id == item["product_id"], Product.stock >= item["quantity"])
                .values(stock=Product.stock - item["quantity"])
            )
            if taken.rowcount != 1:
                raise OutOfStock(f"product {item['product_id']} is short")
    return ctx


@app.task(name="naive.use_balance", acks_late=True, ignore_result=True)
def use_balance(ctx: dict) -> dict:
    with _db("balances").write() as session:
        taken = session.execute(
            update(Balance)
            .where(Balance.user_id == ctx["user_id"], Balance.balance >= ctx["paid"])
            .values(balance=Balance.balance - ctx["paid"])
        )
        if taken.rowcount != 1:
            raise InsufficientBalance(f"user {ctx['user_id']} has less than {ctx['paid']}")
    return ctx


@app.task(name="naive.use_coupon", acks_late=True, ignore_result=True)
def use_coupon(ctx: dict) -> dict:
    if ctx["issued_coupon_id"] is not None:
        with _db("coupons").write() as session:
            taken = session.execute(
                update(IssuedCoupon)
                .where(
                    IssuedCoupon.id == ctx["issued_coupon_id"],
                    IssuedCoupon.user_id == ctx["user_id"],
                    IssuedCoupon.status == UNUSED,
                )
                .values(status=USED, order_id=ctx["order_id"])
            )
            if taken.rowcount != 1:
                raise CouponUnavailable(f"coupon {ctx['issued_coupon_id']} is not usable")
    _mark(COMPLETED_KEY, ctx)
    return ctx


@app.task(name="naive.publish_order", acks_late=True, ignore_result=True)
def publish_order(ctx: dict) -> None:
    items = json.dumps(ctx["items"])
    with _db("dataplatform").write() as session:
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
    _Child.redis.xadd(STREAM, fields)
    _mark(PUBLISHED_KEY, ctx)


STEPS = (create_order, decrease_stock, use_balance, use_coupon, publish_order)
assert tuple(task.name.removeprefix("naive.") for task in STEPS) == STEP_NAMES


def make_chain(ctx: dict):
    first, *rest = STEPS
    sigs = [first.signature(args=(ctx,), queue=QUEUES[0])]
    sigs += [task.signature(queue=queue) for task, queue in zip(rest, QUEUES[1:], strict=True)]
    return chain(*sigs)


def create_app():
    """gunicorn 'bench.naive_chain:create_app()': POST /orders sends the chain."""
    from flask import Flask, jsonify

    from app.auth import TokenVerifier
    from app.services.coupons import IssuedCouponService
    from app.services.products import ProductService
    from bench import peer_api

    products = ProductService(Database(SETTINGS.database_url("products")))
    coupons = IssuedCouponService(Database(SETTINGS.database_url("coupons")))
    verifier = TokenVerifier(SETTINGS.auth_dir)
    web = Flask("naive_chain")
    peer_api.install_errors(web)

    @web.post("/orders")
    def order():
        user_id = peer_api.customer(verifier)
        ctx = peer_api.quote(products, coupons, peer_api.new_order(user_id), user_id)
        ctx["request"] = uuid.uuid4().hex
        make_chain(ctx).apply_async()
        return jsonify({"request": ctx["request"], "status": "SENT"}), 202

    @web.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    return web
