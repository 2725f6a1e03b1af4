"""The happy path (scenario 2's load: one-item orders with an issued coupon, 16 submitters)
and the failure path (scenario 3's), measured on the peers exactly as on the saga:
latency one order at a time from the client's send time of POST /orders to the moment the
order is COMPLETED, throughput from the first POST to the last COMPLETED.

Where each peer's COMPLETED moment comes from:
- naive chain: use_coupon's RPUSH after its commit (bench/naive_chain.py), and
  publish_order's for the fifth task;
- DBOS: the order's updated_at, written by the workflow's COMPLETED status write (right
  after use_coupon), and the data-platform record's recorded_at for publish_order.
Setup goes through the domain services in this process (bench/scenarios.py Shop), untimed.
"""

from __future__ import annotations

import itertools
import time

from sqlalchemy import select

from app.services.dataplatform import OrderRecord
from app.services.orders import Order
from bench import naive_chain
from bench.client import percentiles
from bench.cost import NO_WINDOW
from bench.scenarios import PRICE, _chunks, _epoch, _order, _throughput

FINAL = ("COMPLETED", "FAILED")


def _stamp(raw: bytes) -> tuple[str, float]:
    key, stamp = raw.decode().split()
    return key, float(stamp)


def _setup(shop, count: int):
    users = shop.users(count, balance=10 * PRICE)
    coupons = shop.coupons_for(users)
    product = shop.product(stock=count + 10)
    return users, coupons, product


# --- the naive chain ---------------------------------------------------------------------


def naive_latency(shop, client, count: int, timeout: float = 30.0) -> dict:
    users, coupons, product = _setup(shop, count)
    client.delete(naive_chain.COMPLETED_KEY, naive_chain.PUBLISHED_KEY)
    post_ms, completed_ms, published_ms = [], [], []
    for user in users:
        reply = shop.post_order(_order(user, product, coupons[user]))
        stamps = []
        for key in (naive_chain.COMPLETED_KEY, naive_chain.PUBLISHED_KEY):
            popped = client.blpop([key], timeout=timeout)
            if popped is None:
                raise TimeoutError(f"naive chain {reply.body} did not reach {key} in {timeout}s")
            request, stamp = _stamp(popped[1])
            if request != reply.body["request"]:
                raise RuntimeError(f"expected {reply.body['request']}'s marker, got {request}'s")
            stamps.append(stamp)
        post_ms.append(reply.ms)
        completed_ms.append((stamps[0] - reply.sent_at) * 1000)
        published_ms.append((stamps[1] - reply.sent_at) * 1000)
    return {
        "orders": count,
        "post_ms": percentiles(post_ms),
        "completed_ms": percentiles(completed_ms),
        "published_ms": percentiles(published_ms),
        "latency_samples_ms": [round(v, 3) for v in completed_ms],
    }


def naive_saturation(shop, client, count: int, window=NO_WINDOW) -> dict:
    users, coupons, product = _setup(shop, count)
    client.delete(naive_chain.COMPLETED_KEY, naive_chain.PUBLISHED_KEY)
    window.begin()
    replies, start, posted = shop.submit([_order(u, product, coupons[u]) for u in users])
    deadline = time.monotonic() + max(120.0, count / 2)
    while client.llen(naive_chain.PUBLISHED_KEY) < count:
        if time.monotonic() > deadline:
            done = client.llen(naive_chain.COMPLETED_KEY)
            raise TimeoutError(f"naive chain: {done}/{count} COMPLETED; see naive-worker.log")
        time.sleep(0.5)
    completed = [_stamp(r)[1] for r in client.lrange(naive_chain.COMPLETED_KEY, 0, -1)]
    published = [_stamp(r)[1] for r in client.lrange(naive_chain.PUBLISHED_KEY, 0, -1)]
    cost = window.end(len(completed))
    throughput, elapsed = _throughput(count, start, completed)
    all_published, published_s = _throughput(count, start, published)
    return {
        "orders": count,
        "submitters": shop.threads,
        "completed": len(completed),
        "throughput": throughput,
        "elapsed_s": elapsed,
        "throughput_all_published": all_published,
        "published_elapsed_s": published_s,
        "post_rate": round(count / (posted - start), 1),
        "post_ms_under_load": percentiles([r.ms for r in replies]),
        "cost": cost,
    }


# --- DBOS --------------------------------------------------------------------------------


def _orders(shop, ids: list[int]) -> dict[int, tuple[str, float | None, str | None]]:
    """(status, updated_at, failed_step) of each order, from the orders database."""
    out = {}
    with shop.rt.databases["orders"].read() as session:
        for chunk in _chunks(ids):
            rows = session.execute(
                select(Order.id, Order.status, Order.updated_at, Order.failed_step).where(
                    Order.id.in_(chunk)
                )
            )
            out.update({r.id: (r.status, _epoch(r.updated_at), r.failed_step) for r in rows})
    return out


def _records(shop, ids: list[int]) -> dict[int, float]:
    out = {}
    with shop.rt.databases["dataplatform"].read() as session:
        for chunk in _chunks(ids):
            rows = session.execute(
                select(OrderRecord.order_id, OrderRecord.recorded_at).where(
                    OrderRecord.order_id.in_(chunk)
                )
            )
            out.update({r.order_id: _epoch(r.recorded_at) for r in rows})
    return out


def _settled(shop, ids: list[int]) -> bool:
    orders = _orders(shop, ids)
    if len(orders) < len(ids) or any(s not in FINAL for s, _, _ in orders.values()):
        return False
    completed = [i for i, (s, _, _) in orders.items() if s == "COMPLETED"]
    return len(_records(shop, completed)) == len(completed)


def _wait(shop, ids: list[int], timeout: float, interval: float) -> None:
    deadline = time.monotonic() + timeout
    while not _settled(shop, ids):
        if time.monotonic() > deadline:
            counts: dict[str, int] = {}
            for status, _, _ in _orders(shop, ids).values():
                counts[status] = counts.get(status, 0) + 1
            raise TimeoutError(f"DBOS orders not settled after {timeout:.0f}s: {counts}")
        time.sleep(interval)


def _count(values) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def dbos_latency(shop, count: int) -> dict:
    users, coupons, product = _setup(shop, count)
    post_ms, completed_ms, published_ms = [], [], []
    for user in users:
        reply = shop.post_order(_order(user, product, coupons[user]))
        order_id = reply.body["order_id"]
        _wait(shop, [order_id], timeout=30.0, interval=0.005)
        status, completed, _ = _orders(shop, [order_id])[order_id]
        if status != "COMPLETED":
            raise RuntimeError(f"DBOS order {order_id} ended {status}")
        post_ms.append(reply.ms)
        completed_ms.append((completed - reply.sent_at) * 1000)
        published_ms.append((_records(shop, [order_id])[order_id] - reply.sent_at) * 1000)
    return {
        "orders": count,
        "post_ms": percentiles(post_ms),
        "completed_ms": percentiles(completed_ms),
        "published_ms": percentiles(published_ms),
        "latency_samples_ms": [round(v, 3) for v in completed_ms],
    }


def dbos_saturation(shop, count: int, window=NO_WINDOW) -> dict:
    users, coupons, product = _setup(shop, count)
    window.begin()
    replies, start, posted = shop.submit([_order(u, product, coupons[u]) for u in users])
    ids = [r.body["order_id"] for r in replies]
    _wait(shop, ids, timeout=max(120.0, count / 2), interval=0.5)
    orders = _orders(shop, ids)
    completed = [i for i in ids if orders[i][0] == "COMPLETED"]
    cost = window.end(len(completed))
    records = _records(shop, completed)
    throughput, elapsed = _throughput(count, start, [orders[i][1] for i in completed])
    all_published, published_s = _throughput(count, start, list(records.values()))
    return {
        "orders": count,
        "submitters": shop.threads,
        "statuses": _count(s for s, _, _ in orders.values()),
        "throughput": throughput,
        "elapsed_s": elapsed,
        "throughput_all_published": all_published,
        "published_elapsed_s": published_s,
        "post_rate": round(count / (posted - start), 1),
        "post_ms_under_load": percentiles([r.ms for r in replies]),
        "cost": cost,
        "users": users,
        "coupons": coupons,
    }


def dbos_failure(shop, count: int, used: dict[int, int], window=NO_WINDOW) -> dict:
    """Scenario 3 on DBOS: each order reuses a coupon its user spent, on a product of its
    own with enough stock, so each fails at use_coupon after three steps applied."""
    users = list(itertools.islice(itertools.cycle(used), count))
    product = shop.product(stock=count + 10)
    window.begin()
    replies, start, posted = shop.submit([_order(u, product, used[u]) for u in users])
    ids = [r.body["order_id"] for r in replies]
    _wait(shop, ids, timeout=max(120.0, count / 2), interval=0.5)
    orders = _orders(shop, ids)
    failed = [i for i in ids if orders[i][0] == "FAILED"]
    cost = window.end(len(failed))
    throughput, elapsed = _throughput(count, start, [orders[i][1] for i in failed])
    return {
        "orders": count,
        "statuses": _count(s for s, _, _ in orders.values()),
        "failed_at": _count(orders[i][2] for i in failed),
        # The compensations ran: restore_stock put back what every order took.
        "stock_restored": shop.rt.products.get(product)["stock"] == count + 10,
        "throughput": throughput,
        "elapsed_s": elapsed,
        "post_rate": round(count / (posted - start), 1),
        "cost": cost,
    }
