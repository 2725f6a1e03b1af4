"""The rolling-deploy drill (issue 19): the release that changes the order saga is deployed
process by process while orders keep coming, by the procedure of README "Deploying a
change to the saga", in both saga modes, on real processes (gunicorn, Celery workers, the
orchestrator, the relay, the DLQ worker).

v1 is the shop's plan. v2 (tests/later_build.py, build `fraud-check`) adds check_fraud,
with its compensation, before use_balance, and retries decrease_stock four times instead
of the settings' two. The drill:

1. v1 everywhere, two workers serving every queue. A burst of orders (a backlog), then
   a stream of them, all through the deploy: 300 and more in all.
2. With orders in flight: each worker in turn is replaced (a v2 worker starts, then the
   v1 worker stops: a warm shutdown, what it holds goes back to the queue); then the
   orchestrator, the relay and the DLQ worker; then the API, from which on new orders
   start on v2, until a hundred have.
3. Among the orders, business failures on both versions (a balance that runs out, stock
   that runs out, a coupon two orders want) and one only v2 refuses (an order over its
   fraud limit); and a timeout on each version, aimed at one order of each: its
   decrease_stock times out three times. v1's policy (two retries) sends it to the DLQ,
   whose retry succeeds, although only v2's workers run it by then; v2's (four) outlasts
   it with no DLQ.

Every order must end COMPLETED or FAILED on the version it started on, by that version's
plan; stock, money, coupons and publication must hold for every customer; nothing may be
refused or parked for want of a worker that knows its version; and the API's
`sagaflow_sagas_in_flight` for v1 must read zero at the end, the signal the procedure
waits for before dropping v1. The figures (orders per version, what was in flight at each
deploy step, the time to converge) are printed (`pytest -s`).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from app.order_saga import ORDER
from sagaflow._faults import clear_live_faults, set_live_faults
from tests.later_build import FRAUD_LIMIT, build
from tests.shop import HttpClient, Shop
from tests.stack import Stack
from tests.support import (
    ApiProcess,
    DeadLetterWorkerProcess,
    OrchestratorProcess,
    RelayProcess,
    WorkerProcess,
    patient,
    wait_for,
)

V2 = build("fraud-check")
CUSTOMERS, BURST, V2_ORDERS, TOTAL = 20, 60, 100, 300
PRICE, PACE = 10, 0.1  # each order's price; the seconds between two orders of the stream
# decrease_stock times out this often for the order a timeout is aimed at: more than v1's
# two retries allow, fewer than v2's four.
TIMEOUTS = 3
NEW = "fraud-check"
PLACING = 4  # clients placing the burst at once; it divides CUSTOMERS


@dataclass
class Customer:
    user: int
    product: int
    stock: int
    charged: int
    coupon: int | None = None
    orders: list[int] = field(default_factory=list)


def _customers(shop: Shop) -> list[Customer]:
    """Twenty customers, each with a product of its own (so that stock and money can be
    checked per customer): one whose balance pays for five orders, one whose product has
    five in stock, four with a coupon two of their orders want."""
    customers = []
    for index in range(CUSTOMERS):
        stock = 5 if index == 1 else 200
        charged = 5 * PRICE if index == 0 else 10_000
        user = shop.new_user(balance=charged)
        customers.append(Customer(user, shop.product(stock=stock, price=PRICE), stock, charged))
    for customer in customers[2:6]:
        customer.coupon = shop.coupon_for(customer.user, discount=5)
    return customers


@contextlib.contextmanager
def _shop_on(stack: Stack, api: ApiProcess) -> Iterator[Shop]:
    """A shop whose customers order through `api` (its own HTTP client, closed after)."""
    client = HttpClient(api.url)
    try:
        yield Shop(client, stack.rt, stack._user_ids, stack.credentials)
    finally:
        client.close()


def _order(shop: Shop, customer: Customer, quantity: int = 1, coupon: int | None = None) -> int:
    order_id = shop.order(customer.user, customer.product, quantity, coupon)
    customer.orders.append(order_id)
    return order_id


class Traffic:
    """Customers ordering all through the deploy: one client placing orders one after
    another, PACE apart, on whichever API is current (the deploy switches it), each order
    recorded with the build of the API that took it. In each build's first round, the
    customers with a coupon use it and customers 6 to 8 order more than v2's fraud limit."""

    def __init__(self, stack: Stack, customers: list[Customer], api: ApiProcess, build: str):
        self.stack, self.customers = stack, customers
        self.placed: list[tuple[int, str]] = []  # (order id, the build that took it)
        self._target = (api, build)
        self._lock = threading.Lock()  # held for each order: a switch waits for it
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def switch(self, api: ApiProcess, build: str) -> None:
        """From the next order on, `api`; returns once no order is under way on the old."""
        with self.paused():
            self._target = (api, build)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No order is placed by the stream while inside (one under way finishes first)."""
        with self._lock:
            yield

    def count(self, build: str | None = None) -> int:
        return sum(1 for _, b in self.placed if build in (None, b))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(patient(60))
        if self._error is not None:
            raise AssertionError(f"placing orders failed: {self._error!r}") from self._error

    def _run(self) -> None:
        clients: dict[str, HttpClient] = {}
        try:
            while not self._stop.wait(PACE):
                with self._lock:
                    api, build = self._target
                    client = clients.setdefault(api.url, HttpClient(api.url))
                    shop = Shop(client, self.stack.rt, self.stack._user_ids, self.stack.credentials)
                    nth, index = divmod(self.count(build), CUSTOMERS)
                    customer = self.customers[index]
                    first = nth == 0
                    quantity = FRAUD_LIMIT + 1 if first and 6 <= index <= 8 else 1
                    coupon = customer.coupon if first else None
                    self.placed.append((_order(shop, customer, quantity, coupon), build))
        except BaseException as exc:  # said by stop(), in the test's thread
            self._error = exc
        finally:
            for client in clients.values():
                client.close()


def _burst(stack: Stack, api: ApiProcess, customers: list[Customer]) -> list[int]:
    """BURST plain orders from PLACING clients at once, faster than the workers run them:
    a backlog in flight when the first worker is replaced."""

    def place(part: int) -> list[int]:
        with _shop_on(stack, api) as shop:
            return [_order(shop, customers[i % CUSTOMERS]) for i in range(part, BURST, PLACING)]

    with ThreadPoolExecutor(PLACING) as pool:
        return [o for placed in pool.map(place, range(PLACING)) for o in placed]


def _in_flight(api: ApiProcess, credentials) -> dict[str, int]:
    """What an operator reads on /metrics: sagas still moving, by the version they started on."""
    text = requests.get(api.url + "/metrics", headers=credentials.operator, timeout=30).text
    for family in text_string_to_metric_families(text):
        if family.name == "sagaflow_sagas_in_flight":
            return {
                s.labels["version"]: int(s.value)
                for s in family.samples
                if s.labels["workflow"] == ORDER.name and s.value
            }
    raise AssertionError("the API's /metrics has no sagaflow_sagas_in_flight")


class Deploy:
    """What the drill did, when, and what was in flight then (the note's figures)."""

    def __init__(self, api: ApiProcess, credentials) -> None:
        self.api, self.credentials = api, credentials
        self.began = time.time()
        self.steps: list[tuple[str, float, dict[str, int]]] = []
        self.replaced: list[tuple[float, float]] = []  # each worker's replacement, from/to

    def step(self, what: str) -> None:
        self.steps.append((what, time.time() - self.began, _in_flight(self.api, self.credentials)))

    def report(self, mode: str) -> str:
        lines = [f"rolling deploy drill ({mode}), load average {os.getloadavg()[0]:.2f}:"]
        for what, at, in_flight in self.steps:
            lines.append(f"  {at:6.1f} s  {what:<46}  in flight {in_flight}")
        return "\n".join(lines)


def _aimed_timeout(
    stack: Stack, shop: Shop, customer: Customer, last_order: int, aimed: list[str]
) -> int:
    """One order whose decrease_stock times out TIMEOUTS times, and no other's: the fault is
    aimed at the saga the next order will be (nothing else places orders meanwhile),
    beside those aimed before (`aimed`), which may not have struck every time yet."""
    saga_id = f"order-{last_order + 1}"
    aimed.append(f"decrease_stock:timeout:{TIMEOUTS}@{saga_id}")
    known = [*V2.step_names, *V2.compensation_names]
    set_live_faults(stack.rt.redis, ",".join(aimed), known)
    order_id = _order(shop, customer)
    assert f"order-{order_id}" == saga_id, "another order was placed between the two"
    return order_id


def _lifetime(timeline: dict) -> tuple[float, float]:
    """When the saga started, and when its last step or compensation finished."""
    finished = [s["finished_at"] for s in timeline["steps"] if s["finished_at"]]
    return (
        datetime.fromisoformat(timeline["created_at"]).timestamp(),
        max(datetime.fromisoformat(f).timestamp() for f in finished),
    )


@pytest.mark.parametrize("mode", ["orchestration", "choreography"])
def test_a_release_that_changes_the_saga_rolls_out_under_load(primary_backend, tmp_path, mode):
    stack = Stack(
        primary_backend,
        tmp_path,
        SAGA_MODE=mode,
        SAGA_FAULTS_ENABLED="1",
        # Each customer orders every few seconds for as long as the deploy lasts, which a
        # slow machine makes longer: not the per-customer limit's business here.
        RATE_LIMIT_ORDERS="1000/minute",
    ).start()
    traffic: list[Traffic] = []
    try:
        _drill(stack, mode, traffic)
    finally:
        for each in traffic:
            with contextlib.suppress(AssertionError):  # the drill's own error says more
                each.stop()
        clear_live_faults(stack.rt.redis)
        stack.stop()


def _drill(stack: Stack, mode: str, started: list[Traffic]) -> None:
    workers = [stack.worker() for _ in range(2)]
    every_worker = list(workers)
    dlq = stack.dlq_worker()
    api = stack.api()
    customers = _customers(stack.shop)
    deploy, aimed = Deploy(api, stack.credentials), []

    # 1. v1 everywhere: a burst, then orders all through the deploy.
    burst = _burst(stack, api, customers)
    traffic = Traffic(stack, customers, api, "v1").start()
    started.append(traffic)
    deploy.step(f"{BURST} orders placed at once on v1")

    # 2. The release, process by process, while orders are in flight: the workers one at
    # a time (the new one up before the old one stops), then the orchestrator, the relay
    # and the DLQ worker (one of each runs: the old stops, then the new starts; what
    # arrives meanwhile waits in Redis or in the outbox), the API last: it starts sagas on
    # the new plan, which every process now runs.
    for index, old in enumerate(list(workers)):
        begun = time.time()
        workers[index] = stack.on_later_build(WorkerProcess, NEW)
        every_worker.append(workers[index])
        stopping = time.time()
        old.stop()
        ended = time.time()
        deploy.replaced.append((begun, ended))
        deploy.step(
            f"worker {index + 1} of 2 replaced by v2 (up in {stopping - begun:.1f} s,"
            f" v1 stopped in {ended - stopping:.1f} s, exit {old.proc.returncode})"
        )
    stack.orchestrator.stop()
    stack.orchestrator = stack.on_later_build(OrchestratorProcess, NEW)
    stack.relay.stop()
    stack.relay = stack.on_later_build(RelayProcess, NEW)
    dlq.stop()
    dlq = stack.on_later_build(DeadLetterWorkerProcess, NEW)
    deploy.step("orchestrator, relay, DLQ worker replaced by v2")
    new_api = stack.on_later_build(ApiProcess, NEW)
    # A v1 saga whose retries only v2's workers run, by v1's policy still: placed while
    # the stream waits (it holds its lock), so that its id is the one aimed at.
    with traffic.paused(), _shop_on(stack, api) as shop:
        v1_timeout = _aimed_timeout(stack, shop, customers[10], _last_order(stack), aimed)
    traffic.switch(new_api, "v2")
    api.stop()
    api = deploy.api = new_api
    deploy.step("API replaced by v2: new orders start on v2")

    # 3. v2's orders, until there are enough of them.
    wait_for(
        lambda: traffic.count("v2") >= V2_ORDERS and len(burst) + traffic.count() >= TOTAL,
        patient(240),
        what=f"{V2_ORDERS} orders on v2",
    )
    traffic.stop()
    with _shop_on(stack, api) as shop:
        v2_timeout = _aimed_timeout(stack, shop, customers[11], _last_order(stack), aimed)
    deploy.step("orders stopped")
    last_deploy_step = time.time()

    v1_orders = [*burst, *(o for o, b in traffic.placed if b == "v1"), v1_timeout]
    v2_orders = [*(o for o, b in traffic.placed if b == "v2"), v2_timeout]
    wait_for(
        lambda: not _in_flight(api, stack.credentials),
        patient(240),
        interval=0.5,
        what="every saga to reach its final state",
    )
    final = ("COMPLETED", "FAILED")
    orders = {o: stack.shop.wait_order(o, final, timeout=patient(60)) for o in v1_orders}
    orders |= {o: stack.shop.wait_order(o, final, timeout=patient(60)) for o in v2_orders}
    converged = time.time() - last_deploy_step
    deploy.step("every order final")

    timelines = {o: stack.rt.saga_log.timeline(o) for o in orders}
    lifetimes = [_lifetime(timelines[o]) for o in v1_orders]
    crossed = [
        sum(1 for began, ended in lifetimes if began < until and ended > since)
        for since, until in deploy.replaced
    ]
    print(deploy.report(mode))
    print(
        f"  {len(orders)} orders: {len(v1_orders)} on v1 ({ORDER.version}), {len(v2_orders)}"
        f" on v2 ({V2.version}); v1 sagas moving while each worker was replaced: {crossed};"
        f" every order final {converged:.1f} s after the orders stopped"
    )

    # Orders were in flight while each v1 worker was replaced by a v2 one.
    assert all(crossed), crossed
    # Each on the version it started on, by that version's plan.
    for order_id in v1_orders:
        names = {s["name"] for s in timelines[order_id]["steps"]}
        assert timelines[order_id]["version"] == ORDER.version, order_id
        assert not names & {"check_fraud", "clear_fraud_check"}, (order_id, names)
    for order_id in v2_orders:
        steps = {s["name"]: s for s in timelines[order_id]["steps"]}
        assert timelines[order_id]["version"] == V2.version, order_id
        if orders[order_id]["status"] == "COMPLETED":
            assert steps["check_fraud"]["status"] == "succeeded", (order_id, steps)

    # Only v2 refuses an order over its fraud limit, and undoes what came before.
    over_limit = {o for o in orders if sum(i["quantity"] for i in orders[o]["items"]) > 1}
    assert len(over_limit) == 6, over_limit
    for order_id in over_limit:
        order = orders[order_id]
        if order_id in v2_orders:
            assert (order["status"], order["failed_step"]) == ("FAILED", "check_fraud"), order
            steps = {s["name"]: s["status"] for s in order["steps"]}
            assert steps["clear_fraud_check"] == steps["restore_stock"] == "succeeded", steps
        else:
            assert order["status"] == "COMPLETED", order

    # Business failures on both versions; the invariants hold for every customer.
    assert sum(orders[o]["status"] == "COMPLETED" for o in customers[0].orders) == 5
    assert sum(orders[o]["status"] == "COMPLETED" for o in customers[1].orders) == 5
    for customer in customers:
        stack.shop.check_invariants(
            customer.orders,
            customer.product,
            customer.stock,
            customer.user,
            customer.charged,
            customer.coupon,
        )

    # The timeouts: v1's saga went to the DLQ after its two retries (v2's workers ran it
    # by v1's policy) and the DLQ's retry finished it; v2's outlasted them in its four.
    entries = stack.rt.dead_letters.entries()
    assert [(e["name"], e["status"]) for e in entries if e["saga_id"] == f"order-{v1_timeout}"] == [
        ("decrease_stock", "resolved")
    ]
    assert not [e for e in entries if e["saga_id"] == f"order-{v2_timeout}"]
    assert orders[v1_timeout]["status"] == orders[v2_timeout]["status"] == "COMPLETED"
    v2_stock = {s["name"]: s for s in orders[v2_timeout]["steps"]}["decrease_stock"]
    assert v2_stock["attempts"] == TIMEOUTS + 1, v2_stock
    # Nothing else waits in the DLQ, and nothing went there for want of a worker: no saga
    # refused for its version, none stalled on a task an old build did not register.
    assert all(e["status"] == "resolved" for e in entries), entries
    assert not [e for e in entries if "version" in e["error"]], entries
    logs = [proc.log() for proc in every_worker]
    for log in logs:
        assert "is not known here" not in log and "unregistered task" not in log.lower()
    lost = _lost_at_a_stop(stack, [e for e in entries if "stalled" in e["error"]], deploy, logs)
    print(f"  messages lost at a worker's stop, found by the stall check: {lost}")
    # What the procedure waits for before v1 is dropped from `earlier`.
    assert _in_flight(api, stack.credentials) == {}


def _lost_at_a_stop(
    stack: Stack, stalled: list[dict], deploy: Deploy, worker_logs: list[str]
) -> list[str]:
    """The sagas the stall check parked, each checked to be a message lost by a stopping
    worker, the one way a saga may stall here: Celery's Redis transport pops a message
    before it records it as unacknowledged, so one popped in the instant a worker stops is
    gone, nothing runs it and nothing hands it back (celery/celery#7950; README "Deploying
    a change to the saga"). Its saga last moved before a v1 worker's stop ended, and no
    worker logged running the stalled work before it was parked (a task an old build did
    not register is caught above, by the workers' logs)."""
    lost = []
    for entry in stalled:
        saga_id, name, parked = entry["saga_id"], entry["name"], entry["first_failed_at"]
        timeline = stack.rt.saga_log.log.timeline(saga_id)
        moments = [timeline["created_at"], *(s["finished_at"] for s in timeline["steps"])]
        last_moved = max(
            t for t in (datetime.fromisoformat(m).timestamp() for m in moments if m) if t < parked
        )
        # A worker's replacement ends with the old one's stop.
        assert any(last_moved <= ended for _, ended in deploy.replaced), (entry, deploy.replaced)
        ran = re.compile(
            rf"^(\S+ \S+) .*saga_id={re.escape(saga_id)} step={re.escape(name)}\b", re.M
        )
        ran_before = [
            at
            for log in worker_logs
            for at in ran.findall(log)
            if datetime.strptime(at, "%Y-%m-%d %H:%M:%S,%f").timestamp() < parked
        ]
        assert not ran_before, (entry, ran_before)
        lost.append(f"{saga_id}:{name}")
    return lost


def _last_order(stack: Stack) -> int:
    """The newest order's id (nothing places one while this is read and the next placed)."""
    [newest] = stack.rt.orders.summaries(None, 1)
    return newest["order_id"]
