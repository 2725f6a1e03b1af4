"""Scenario 6, the reference: the same order done the monolith way, in one transaction on
one database, with row locks on everything it touches, answered synchronously.

Served like the saga's API (gunicorn, same worker count) by `bench.monolith:create_app()`,
reading MONOLITH_DATABASE_URL. Request bodies are validated with the saga API's own schema.
Locks: SQLite takes the database's write lock up front (BEGIN IMMEDIATE, as sagaflow/_db.py does);
PostgreSQL locks the product, balance and issued-coupon rows with SELECT ... FOR UPDATE.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine

from sagaflow import Database

metadata = MetaData()
products = Table(
    "products",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200)),
    Column("price", Integer),
    Column("stock", Integer),
    CheckConstraint("stock >= 0", name="stock_not_negative"),
)
balances = Table(
    "balances",
    metadata,
    Column("user_id", Integer, primary_key=True, autoincrement=False),
    Column("balance", Integer),
    CheckConstraint("balance >= 0", name="balance_not_negative"),
)
coupons = Table(
    "coupons",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("discount", Integer),
    Column("quantity", Integer),
)
issued_coupons = Table(
    "issued_coupons",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("coupon_id", Integer),
    Column("user_id", Integer, index=True),
    Column("status", String(16)),
    Column("order_id", Integer, nullable=True),
)
orders = Table(
    "orders",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, index=True),
    Column("status", String(20)),
    Column("issued_coupon_id", Integer, nullable=True),
    Column("total", Integer),
    Column("discount", Integer),
    Column("paid", Integer),
    Column("created_at", DateTime(timezone=True)),
)
order_items = Table(
    "order_items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("order_id", Integer, index=True),
    Column("product_id", Integer),
    Column("quantity", Integer),
    Column("unit_price", Integer),
)
order_payments = Table(
    "order_payments",
    metadata,
    Column("order_id", Integer, primary_key=True, autoincrement=False),
    Column("amount", Integer),
    Column("status", String(16)),
)


class Refused(Exception):
    """A business refusal: out of stock, balance too low, coupon not usable."""


def make_engine(url: str) -> Engine:
    """The services' own engine setup (sagaflow/_db.py): on SQLite, WAL and BEGIN IMMEDIATE."""
    return Database(url, create=True).engine


def place_order(engine: Engine, user_id: int, items: list[dict], coupon_id: int | None) -> dict:
    """The whole order, all or nothing, in one transaction."""
    lock = engine.dialect.name != "sqlite"  # SQLite: BEGIN IMMEDIATE locked everything
    ids = sorted(item["product_id"] for item in items)
    with engine.begin() as conn:
        query = (
            select(products.c.id, products.c.price, products.c.stock)
            .where(products.c.id.in_(ids))
            .order_by(products.c.id)
        )
        rows = {r.id: r for r in conn.execute(query.with_for_update() if lock else query)}
        for item in items:
            row = rows.get(item["product_id"])
            if row is None or row.stock < item["quantity"]:
                raise Refused(f"product {item['product_id']} is unknown or out of stock")
        total = sum(rows[i["product_id"]].price * i["quantity"] for i in items)
        discount = 0
        if coupon_id is not None:
            query = (
                select(issued_coupons.c.user_id, issued_coupons.c.status, coupons.c.discount)
                .join(coupons, coupons.c.id == issued_coupons.c.coupon_id)
                .where(issued_coupons.c.id == coupon_id)
            )
            held = conn.execute(query.with_for_update() if lock else query).first()
            if held is None or held.user_id != user_id or held.status != "UNUSED":
                raise Refused(f"coupon {coupon_id} is not usable by user {user_id}")
            discount = min(held.discount, total)
        paid = total - discount
        query = select(balances.c.balance).where(balances.c.user_id == user_id)
        balance = conn.execute(query.with_for_update() if lock else query).scalar()
        if balance is None or balance < paid:
            raise Refused(f"user {user_id} has less than {paid}")
        for item in sorted(items, key=lambda i: i["product_id"]):
            conn.execute(
                update(products)
                .where(products.c.id == item["product_id"])
                .values(stock=products.c.stock - item["quantity"])
            )
        conn.execute(
            update(balances)
            .where(balances.c.user_id == user_id)
            .values(balance=balances.c.balance - paid)
        )
        order_id = conn.execute(
            insert(orders).values(
                user_id=user_id,
                status="COMPLETED",
                issued_coupon_id=coupon_id,
                total=total,
                discount=discount,
                paid=paid,
                created_at=datetime.now(UTC),
            )
        ).inserted_primary_key[0]
        if coupon_id is not None:
            conn.execute(
                update(issued_coupons)
                .where(issued_coupons.c.id == coupon_id)
                .values(status="USED", order_id=order_id)
            )
        conn.execute(
            insert(order_items),
            [
                {
                    "order_id": order_id,
                    "product_id": i["product_id"],
                    "quantity": i["quantity"],
                    "unit_price": rows[i["product_id"]].price,
                }
                for i in items
            ],
        )
        conn.execute(insert(order_payments).values(order_id=order_id, amount=paid, status="PAID"))
    return {"order_id": order_id, "status": "COMPLETED", "total": total, "paid": paid}


def create_app():
    """gunicorn 'bench.monolith:create_app()'."""
    from flask import Flask, jsonify, request
    from pydantic import ValidationError

    from app.http.schemas import NewOrder

    engine = make_engine(os.environ["MONOLITH_DATABASE_URL"])
    app = Flask("monolith")

    @app.post("/orders")
    def order():
        try:
            body = NewOrder.model_validate(request.get_json(silent=True) or {})
        except ValidationError as exc:
            return jsonify({"error": "invalid", "detail": str(exc)}), 400
        items = [item.model_dump() for item in body.items]
        try:
            return jsonify(place_order(engine, body.user_id, items, body.issued_coupon_id)), 201
        except Refused as exc:
            return jsonify({"error": "refused", "detail": str(exc)}), 409

    @app.get("/healthz")
    def healthz():
        with engine.connect() as conn:
            conn.execute(select(1))
        return jsonify({"status": "ok"})

    return app


# --- used by the benchmark process ------------------------------------------------------


def seed(url: str, users: list[int], stock: int, price: int, balance: int, discount: int):
    """One product, the users' balances, and one UNUSED coupon per user."""
    engine = make_engine(url)
    try:
        metadata.create_all(engine)
        with engine.begin() as conn:
            product = conn.execute(
                insert(products).values(name="bench item", price=price, stock=stock)
            ).inserted_primary_key[0]
            coupon = conn.execute(
                insert(coupons).values(discount=discount, quantity=len(users))
            ).inserted_primary_key[0]
            conn.execute(insert(balances), [{"user_id": u, "balance": balance} for u in users])
            conn.execute(
                insert(issued_coupons),
                [{"coupon_id": coupon, "user_id": u, "status": "UNUSED"} for u in users],
            )
            rows = conn.execute(select(issued_coupons.c.user_id, issued_coupons.c.id))
            issued = {r.user_id: r.id for r in rows}
        return product, issued
    finally:
        engine.dispose()


def check(url: str, product: int, stock: int, orders_placed: int) -> dict:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            completed = conn.scalar(select(func.count()).select_from(orders))
            left = conn.scalar(select(products.c.stock).where(products.c.id == product))
        return {"completed": completed, "stock_ok": left + orders_placed == stock}
    finally:
        engine.dispose()


def measure(
    port: int,
    threads: int,
    users: list[int],
    product: int,
    issued: dict,
    latency_count: int,
    window=None,
) -> dict:
    """The same orders as the saga's saturation run, then a few one at a time. The
    window's cost covers the saturation run, per order."""
    from bench.client import call, percentiles, submit_all
    from bench.cost import NO_WINDOW

    window = window or NO_WINDOW

    def post(user: int):
        body = {
            "user_id": user,
            "items": [{"product_id": product, "quantity": 1}],
            "issued_coupon_id": issued[user],
        }
        reply = call(port, "POST", "/orders", body)
        if reply.status != 201:
            raise RuntimeError(f"monolith POST /orders answered {reply.status}: {reply.body}")
        return reply

    loaded, latency_users = users[: len(users) - latency_count], users[-latency_count:]
    window.begin()
    replies, start, end = submit_all(threads, loaded, post)
    cost = window.end(len(loaded))
    one_by_one = [post(user).ms for user in latency_users]
    return {
        "orders": len(loaded),
        "submitters": threads,
        "throughput": round(len(loaded) / (end - start), 2),
        "elapsed_s": round(end - start, 3),
        "post_ms_under_load": percentiles([r.ms for r in replies]),
        "latency_ms": percentiles(one_by_one),
        "p50_ms": percentiles(one_by_one)["p50"],
        "cost": cost,
    }
