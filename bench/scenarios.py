"""Scenarios 2 to 5: the saga through its real HTTP API (gunicorn) and real workers.

Setup (products, balances, issued coupons) goes through the domain services in this process,
as app.seed does, and is not timed. Timings come from two clocks on the same machine, both
time.time(): the client's send time of POST /orders, and the saga log's finished_at of a
step (use_coupon finishing is what turns the order COMPLETED, in the same transaction;
publish_order is the chain's fifth and last task).
"""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime

from sqlalchemy import func, select

from app.order_context import saga_id_of
from app.services.coupons import ISSUED, PENDING, IssueRequest
from app.services.orders import Order, OrderItem
from bench.client import call, percentiles, submit_all
from bench.cost import NO_WINDOW
from sagaflow import SagaInstance, SagaStepRow, StepStatus

FINAL = ("COMPLETED", "FAILED", "NEEDS_ATTENTION")
STEP_DONE = (StepStatus.SUCCEEDED, StepStatus.SKIPPED, StepStatus.FAILED, StepStatus.DEAD_LETTERED)
PRICE, DISCOUNT = 1000, 100
# How often a run under load looks whether it is done. Finish times come from the saga
# log, so this only bounds the idle tail of a cost window; each look is the bench's own
# reads (its commits are not charged, its backends' CPU is).
SETTLE_POLL = 0.5


def _epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite keeps no zone; the app writes UTC
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def _chunks(ids: list[int], size: int = 500):
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


class Shop:
    """The bench's view of the running service: HTTP for the measured calls, the domain
    services for setup, and the saga log for timings and checks."""

    def __init__(self, rt, port: int, threads: int, credentials, user_ids=None):
        self.rt, self.port, self.threads = rt, port, threads
        self.credentials = credentials  # user id -> its customer's Authorization header
        self.user_ids = user_ids or itertools.count(1)

    # --- setup (not timed) -----------------------------------------------------------

    def users(self, count: int, balance: int) -> list[int]:
        users = [next(self.user_ids) for _ in range(count)]
        for user in users:
            self.rt.balances.charge(user, balance)
        return users

    def coupons_for(self, users: list[int]) -> dict[int, int]:
        """One issued coupon per user, through the first-come-first-served request flow."""
        coupon = self.rt.coupons.create("bench", DISCOUNT, max(1, len(users)))
        issued = {}
        for user in users:
            request = self.rt.issue_requests.request(coupon["id"], user)
            issued[user] = self.rt.issue_requests.process(request["request_id"])["issued_coupon_id"]
        return issued

    def product(self, stock: int, price: int = PRICE) -> int:
        return self.rt.products.create("bench item", price, stock)["id"]

    # --- the measured calls ----------------------------------------------------------

    def post_order(self, body: dict):
        reply = call(self.port, "POST", "/orders", body, self.credentials(body["user_id"]))
        if reply.status != 202:
            raise RuntimeError(f"POST /orders answered {reply.status}: {reply.body}")
        return reply

    def submit(self, bodies: list[dict]):
        replies, start, end = submit_all(self.threads, bodies, self.post_order)
        return replies, start, end

    # --- reading the saga log --------------------------------------------------------

    def statuses(self, ids: list[int]) -> dict[int, str]:
        """Each order's saga status, from the saga log."""
        out = {}
        with self.rt.databases["orders"].read() as session:
            for chunk in _chunks(ids):
                rows = session.execute(
                    select(SagaInstance.business_key, SagaInstance.status).where(
                        SagaInstance.saga_id.in_([saga_id_of(i) for i in chunk])
                    )
                )
                out.update({int(r.business_key): r.status for r in rows})
        return out

    def step_rows(self, ids: list[int], name: str) -> dict[int, tuple[str, float | None]]:
        """(status, finished at) of one step per order: the worker's own clock, when it
        sent the step's success."""
        out = {}
        with self.rt.databases["orders"].read() as session:
            for chunk in _chunks(ids):
                by_saga = {saga_id_of(i): i for i in chunk}
                rows = session.execute(
                    select(SagaStepRow.saga_id, SagaStepRow.status, SagaStepRow.finished_at).where(
                        SagaStepRow.saga_id.in_(list(by_saga)), SagaStepRow.name == name
                    )
                )
                out.update({by_saga[r.saga_id]: (r.status, _epoch(r.finished_at)) for r in rows})
        return out

    def settled(self, ids: list[int]) -> bool:
        """Every order final, and every COMPLETED one published (or parked)."""
        statuses = self.statuses(ids)
        if len(statuses) < len(ids) or any(s not in FINAL for s in statuses.values()):
            return False
        completed = [i for i, s in statuses.items() if s == "COMPLETED"]
        published = self.step_rows(completed, "publish_order")
        return all(published.get(i, ("", None))[0] in STEP_DONE for i in completed)

    def wait_settled(self, ids: list[int], timeout: float, interval: float = 0.25) -> None:
        deadline = time.monotonic() + timeout
        while not self.settled(ids):
            if time.monotonic() > deadline:
                counts = {}
                for status in self.statuses(ids).values():
                    counts[status] = counts.get(status, 0) + 1
                raise TimeoutError(f"orders not settled after {timeout:.0f}s: {counts}")
            time.sleep(interval)

    def wait_one(self, order_id: int, timeout: float = 30.0) -> None:
        """Poll one order's saga log (cheap, straight from the database) until settled."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.statuses([order_id]).get(order_id)
            publish = self.step_rows([order_id], "publish_order").get(order_id, ("", None))
            if status == "FAILED" or (status in FINAL and publish[0] in STEP_DONE):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"order {order_id} not settled after {timeout}s ({status})")
            time.sleep(0.005)

    def failed_steps(self, ids: list[int]) -> dict[str, int]:
        """How many of these sagas turned back at each step (the saga log's failed_step)."""
        counts: dict[str, int] = {}
        with self.rt.databases["orders"].read() as session:
            for chunk in _chunks(ids):
                rows = session.scalars(
                    select(SagaInstance.failed_step).where(
                        SagaInstance.saga_id.in_([saga_id_of(i) for i in chunk]),
                        SagaInstance.failed_step.is_not(None),
                    )
                )
                for step in rows:
                    counts[step] = counts.get(step, 0) + 1
        return counts

    def count_statuses(self, ids: list[int]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for status in self.statuses(ids).values():
            counts[status] = counts.get(status, 0) + 1
        return counts


class OutboxCost:
    """What the outboxes cost over a run: rows written per order (every service's outbox),
    and the CPU time the relay process used per order."""

    def __init__(self, rt, relay_cpu_seconds, idle_seconds: float = 3.0):
        self.rt, self.relay_cpu = rt, relay_cpu_seconds
        # What the relay's polling costs with nothing to send, to tell it from sending.
        before = relay_cpu_seconds()
        time.sleep(idle_seconds)
        self.idle_ms_per_s = round((relay_cpu_seconds() - before) * 1000 / idle_seconds, 2)
        self.rows, self.orders, self.cpu = self._rows(), self._orders(), relay_cpu_seconds()

    def _rows(self) -> int:
        from app.bootstrap import OUTBOXES

        total = 0
        for service, table in OUTBOXES.items():
            with self.rt.databases[service].read() as session:
                total += session.scalar(select(func.count()).select_from(table))
        return total

    def _orders(self) -> int:
        with self.rt.databases["orders"].read() as session:
            return session.scalar(select(func.count()).select_from(Order))

    def measure(self) -> dict:
        orders = self._orders() - self.orders
        rows = self._rows() - self.rows
        cpu = self.relay_cpu() - self.cpu
        return {
            "orders": orders,
            "outbox_rows_per_order": round(rows / orders, 2) if orders else None,
            "relay_cpu_ms_per_order": round(cpu * 1000 / orders, 3) if orders else None,
            "relay_idle_cpu_ms_per_s": self.idle_ms_per_s,
        }


def _order(user: int, product: int, coupon: int | None, quantity: int = 1) -> dict:
    return {
        "user_id": user,
        "items": [{"product_id": product, "quantity": quantity}],
        "issued_coupon_id": coupon,
    }


def _throughput(count: int, start: float, finishes: list[float | None]) -> tuple[float, float]:
    done = [f for f in finishes if f is not None]
    if not done:
        return 0.0, 0.0
    elapsed = max(done) - start
    return round(count / elapsed, 2), round(elapsed, 3)


# --- scenario 2: happy path --------------------------------------------------------------


def happy_latency(shop: Shop, count: int) -> dict:
    """One order at a time, with a coupon, every step doing real work."""
    users = shop.users(count, balance=10 * PRICE)
    coupons = shop.coupons_for(users)
    product = shop.product(stock=count + 10)
    post_ms, completed_ms, chain_ms, server_ms = [], [], [], []
    for user in users:
        reply = shop.post_order(_order(user, product, coupons[user]))
        order_id = reply.body["order_id"]
        shop.wait_one(order_id)
        post_ms.append(reply.ms)
        pivot = shop.step_rows([order_id], "use_coupon")[order_id][1]
        publish = shop.step_rows([order_id], "publish_order")[order_id][1]
        with shop.rt.databases["orders"].read() as session:
            created = _epoch(session.get(Order, order_id).created_at)
        completed_ms.append((pivot - reply.sent_at) * 1000)
        chain_ms.append((publish - reply.sent_at) * 1000)
        server_ms.append((pivot - created) * 1000)
    return {
        "orders": count,
        "post_ms": percentiles(post_ms),
        "completed_ms": percentiles(completed_ms),
        "published_ms": percentiles(chain_ms),
        "created_to_completed_ms": percentiles(server_ms),
        "latency_samples_ms": [round(v, 3) for v in completed_ms],
    }


def happy_saturation(shop: Shop, count: int, window=NO_WINDOW) -> dict:
    """`count` orders from `shop.threads` concurrent submitters; all with coupons. The
    window's cost is per COMPLETED order."""
    users = shop.users(count, balance=10 * PRICE)
    coupons = shop.coupons_for(users)
    product = shop.product(stock=count + 10)
    window.begin()
    replies, start, posted = shop.submit([_order(u, product, coupons[u]) for u in users])
    ids = [r.body["order_id"] for r in replies]
    shop.wait_settled(ids, timeout=max(120.0, count / 2), interval=SETTLE_POLL)
    statuses = shop.count_statuses(ids)
    cost = window.end(statuses.get("COMPLETED", 0))
    pivot = shop.step_rows(ids, "use_coupon")
    publish = shop.step_rows(ids, "publish_order")
    throughput, elapsed = _throughput(count, start, [pivot[i][1] for i in ids])
    all_published, published_s = _throughput(count, start, [publish[i][1] for i in ids])
    return {
        "orders": count,
        "submitters": shop.threads,
        "statuses": statuses,
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


# --- scenario 3: failure path ------------------------------------------------------------


def failure_path(shop: Shop, count: int, used: dict[int, int], window=NO_WINDOW) -> dict:
    """Orders that fail at use_coupon: each reuses a coupon its user already spent in a
    COMPLETED order. create_order, decrease_stock and use_balance apply, use_coupon refuses,
    and refund_balance, restore_stock, cancel_order run (newest first). A product of its
    own with stock for every order: the happy path's is nearly sold out, and orders that
    found it empty would fail at decrease_stock instead, with one compensation."""
    users = list(itertools.islice(itertools.cycle(used), count))
    product = shop.product(stock=count + 10)
    window.begin()
    replies, start, posted = shop.submit([_order(u, product, used[u]) for u in users])
    ids = [r.body["order_id"] for r in replies]
    shop.wait_settled(ids, timeout=max(120.0, count / 2), interval=SETTLE_POLL)
    statuses = shop.count_statuses(ids)
    cost = window.end(statuses.get("FAILED", 0))
    cancel = shop.step_rows(ids, "cancel_order")
    throughput, elapsed = _throughput(count, start, [cancel.get(i, ("", None))[1] for i in ids])
    compensated = 0
    for name in ("refund_balance", "restore_stock", "cancel_order"):
        rows = shop.step_rows(ids, name)
        compensated += sum(1 for i in ids if rows.get(i, ("",))[0] == StepStatus.SUCCEEDED)
    return {
        "orders": count,
        "statuses": statuses,
        "failed_at": shop.failed_steps(ids),
        "stock_restored": shop.rt.products.get(product)["stock"] == count + 10,
        "compensations_run": compensated,
        "throughput": throughput,
        "elapsed_s": elapsed,
        "post_rate": round(count / (posted - start), 1),
        "cost": cost,
    }


# --- scenario 4: contention --------------------------------------------------------------


def contention(shop: Shop, orders: int, products: int, stock: int, window=NO_WINDOW) -> dict:
    """`orders` single-unit orders spread over a few hot products whose stock runs out part
    way; a tenth of the users can pay for only part of their orders. Then the invariants."""
    product_ids = [shop.product(stock=stock, price=500) for _ in range(products)]
    per_user = 10
    users = [next(shop.user_ids) for _ in range(max(1, orders // per_user))]
    charged = {u: (4 * 500 if i % 10 == 0 else per_user * 500) for i, u in enumerate(users)}
    for user, amount in charged.items():
        shop.rt.balances.charge(user, amount)
    bodies = [_order(users[i % len(users)], product_ids[i % products], None) for i in range(orders)]
    window.begin()
    replies, start, posted = shop.submit(bodies)
    ids = [r.body["order_id"] for r in replies]
    shop.wait_settled(ids, timeout=max(120.0, orders / 2), interval=SETTLE_POLL)
    cost = window.end(orders)  # per settled order, COMPLETED or FAILED
    finishes = []
    for name in ("publish_order", "cancel_order"):
        rows = shop.step_rows(ids, name)
        finishes += [rows[i][1] for i in rows]
    throughput, elapsed = _throughput(orders, start, finishes)
    checks = contention_invariants(shop, ids, product_ids, stock, charged)
    return {
        "orders": orders,
        "products": products,
        "stock_each": stock,
        "statuses": shop.count_statuses(ids),
        "throughput": throughput,
        "elapsed_s": elapsed,
        "post_rate": round(orders / (posted - start), 1),
        "invariants": checks,
        "cost": cost,
    }


def contention_invariants(shop: Shop, ids, product_ids, initial: int, charged: dict) -> dict:
    sold = {p: 0 for p in product_ids}
    paid = 0
    statuses = shop.statuses(ids)
    with shop.rt.databases["orders"].read() as session:
        for chunk in _chunks(ids):
            for order in session.scalars(select(Order).where(Order.id.in_(chunk))):
                if order.status == "COMPLETED":
                    paid += order.paid
            rows = session.execute(
                select(OrderItem.order_id, OrderItem.product_id, OrderItem.quantity).where(
                    OrderItem.order_id.in_(chunk)
                )
            )
            for row in rows:
                if statuses[row.order_id] == "COMPLETED":
                    sold[row.product_id] += row.quantity
    stock = {p: shop.rt.products.get(p)["stock"] for p in product_ids}
    balances = sum(shop.rt.balances.get(u)["balance"] for u in charged)
    checks = {
        "all_settled": all(s in ("COMPLETED", "FAILED") for s in statuses.values()),
        "no_negative_stock": all(v >= 0 for v in stock.values()),
        "stock_plus_sold_is_initial": all(stock[p] + sold[p] == initial for p in product_ids),
        "money_conserved": balances + paid == sum(charged.values()),
    }
    checks["ok"] = all(checks.values())
    checks["detail"] = {
        "stock_left": sum(stock.values()),
        "sold": sum(sold.values()),
        "initial": initial * len(product_ids),
        "balances": balances,
        "paid_by_completed": paid,
        "charged": sum(charged.values()),
    }
    return checks


# --- scenario 5: coupon issuance ---------------------------------------------------------


def coupon_issuance(shop: Shop, requests: int, quantity: int, window=NO_WINDOW) -> dict:
    """`requests` first-come-first-served issue requests (one per user) for one coupon."""
    coupon = shop.rt.coupons.create("bench rush", DISCOUNT, quantity)
    users = [next(shop.user_ids) for _ in range(requests)]

    def issue(user: int):
        reply = call(
            shop.port, "POST", f"/coupons/{coupon['id']}/issue", {}, shop.credentials(user)
        )
        if reply.status != 202:
            raise RuntimeError(f"POST issue answered {reply.status}: {reply.body}")
        return reply

    window.begin()
    replies, start, posted = submit_all(shop.threads, users, issue)
    ids = [r.body["request_id"] for r in replies]
    db = shop.rt.databases["coupons"]

    def pending() -> int:
        with db.read() as session:
            return session.scalar(
                select(func.count())
                .select_from(IssueRequest)
                .where(IssueRequest.coupon_id == coupon["id"], IssueRequest.status == PENDING)
            )

    deadline = time.monotonic() + max(120.0, requests / 20)
    while pending():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{pending()} issue requests still pending")
        time.sleep(SETTLE_POLL)
    cost = window.end(requests)  # per processed request
    with db.read() as session:
        rows = session.execute(
            select(IssueRequest.status, IssueRequest.processed_at).where(IssueRequest.id.in_(ids))
        ).all()
    issued = sum(1 for r in rows if r.status == ISSUED)
    last = max(_epoch(r.processed_at) for r in rows if r.processed_at is not None)
    counter = shop.rt.coupons.get(coupon["id"])["issued"]
    return {
        "requests": requests,
        "quantity": quantity,
        "requests_per_s": round(requests / (posted - start), 1),
        "processed_per_s": round(requests / (last - start), 1),
        "elapsed_s": round(last - start, 3),
        "post_ms": percentiles([r.ms for r in replies]),
        "issued": issued,
        "coupon_issued_counter": counter,
        "exactly_quantity_issued": issued == quantity == counter,
        "cost": cost,
    }
