"""The transactional outbox: a saga's start is committed with its order, so a crash between
the commit and the broker loses nothing; the relay keeps each saga's messages in order,
shares the work with other relays without sending a row twice, retries, and parks what it
cannot send in the DLQ; a message sent twice starts its saga once."""

from __future__ import annotations

import threading
import time

import pytest
import redis as redis_lib
from sqlalchemy import select

from app.order_context import OrderContext
from app.order_saga import ORDER
from app.schema import upgrade_service
from app.services.orders import Outbox as OrdersOutbox
from app.workflows import WORKFLOWS
from sagaflow import SagaLog, Workflow
from sagaflow._choreography import MODES
from sagaflow._db import Database
from sagaflow._outbox import AfterCommit, Outbox, Relay, Wakeup, enqueue, message_id
from sagaflow._starts import Starts
from tests.stack import Stack, available_backends
from tests.support import PostgresDatabases, RedisServer, http, postgres_admin_url, wait_for

# --- the relay's rules, in-process on a real database ----------------------------------


@pytest.fixture(params=available_backends())
def orders_db(request, tmp_path):
    if request.param == "postgresql":
        pg = PostgresDatabases(postgres_admin_url())
        request.addfinalizer(pg.drop)  # before create: dropped even if a step below fails
        url = pg.create()["orders"]
    else:
        url = f"sqlite:///{tmp_path / 'orders.db'}"
    upgrade_service("orders", url)
    db = Database(url)
    yield db
    db.dispose()


def _write(db, key: str, n: int) -> list[int]:
    with db.write() as session:
        return [enqueue(session, OrdersOutbox, key, "stream", {"n": i}) for i in range(n)]


class Recorder:
    def __init__(self, fail_on=()):
        self.sent, self.fail_on = [], set(fail_on)
        self.sent_messages = []

    def send(self, kind, payload, mid):
        if mid in self.fail_on:
            self.fail_on.discard(mid)
            raise ConnectionError("broker unreachable")
        self.sent.append(mid)
        self.sent_messages.append((kind, payload, mid))


def test_work_sends_the_rows_it_committed_and_leaves_the_rest_to_the_relay(orders_db):
    recorder = Recorder()
    outbox = Outbox("orders", orders_db, OrdersOutbox, lease_seconds=60)
    writer = AfterCommit(Relay([outbox], recorder.send, lambda *a: None, backoff=lambda n: 0))
    relay = Relay([Outbox("orders", orders_db, OrdersOutbox)], recorder.send, lambda *a: None)

    with writer.collect() as held:
        [committed] = _write(orders_db, "order-1", 1)
        with pytest.raises(RuntimeError), orders_db.write() as session:
            enqueue(session, OrdersOutbox, "order-2", "stream", {"n": 0})
            raise RuntimeError("the work's transaction fails after writing its row")
    assert [h.row_id for h in held] == [committed]  # the rolled-back row is not there
    assert relay.run_once() == 0  # held by its writer: no relay takes it meanwhile
    writer.send(held)
    assert recorder.sent == [message_id("orders", committed)]
    assert outbox.pending() == 0  # marked sent by the writer: nothing left for a relay

    with writer.collect() as held:
        [failed] = _write(orders_db, "order-3", 1)
    recorder.fail_on = {message_id("orders", failed)}
    writer.send(held)  # the broker refuses it: the relay's, due again after its backoff
    assert relay.run_once() == 1
    assert recorder.sent[-1] == message_id("orders", failed)

    _write(orders_db, "order-4", 1)  # written outside any work: the relay's from the start
    assert relay.run_once() == 1


def _order_ctx(order_id: int) -> OrderContext:
    line = {"product_id": 1, "quantity": 2, "unit_price": 50}
    return OrderContext(order_id=order_id, user_id=7, items=[line], total=100, discount=0, paid=100)


def test_a_saga_start_commits_with_its_record_and_is_sent_once_after(orders_db):
    recorder = Recorder()
    outbox = Outbox("orders", orders_db, OrdersOutbox, lease_seconds=60)
    relay = Relay([outbox], recorder.send, lambda *a: None, backoff=lambda n: 0)
    starts = Starts(WORKFLOWS, relay)
    log = SagaLog(orders_db, WORKFLOWS)

    rolled_back = starts.start(ORDER)
    with pytest.raises(RuntimeError, match="order fails"), orders_db.write() as session:
        rolled_back.write(session, _order_ctx(1))
        raise RuntimeError("the order fails after its saga was written")
    with pytest.raises(RuntimeError, match="without a committed write"):
        rolled_back.send()  # it never existed: nothing may start
    assert log.timeline("order-1") is None and outbox.pending() == 0

    start = starts.start(ORDER)
    with orders_db.write() as session:
        assert start.write(session, _order_ctx(2)) == "order-2"
    assert relay.run_once() == 0  # held by the writer: no relay sends it meanwhile
    assert start.send()
    [(kind, payload, mid)] = recorder.sent_messages
    assert (kind, payload["workflow"], payload["ctx"]["order_id"]) == ("start", "order", 2)
    assert outbox.pending() == 0
    assert log.timeline("order-2")["status"] == "PENDING"


def test_a_start_names_what_this_process_cannot_start(orders_db):
    serving_nothing = Starts(WORKFLOWS, Relay([], Recorder().send, lambda *a: None))
    with pytest.raises(ValueError, match="does not serve 'orders', the home of workflow"):
        serving_nothing.start(ORDER)
    other = Workflow(
        name="refund", context=OrderContext, key=lambda c: c.order_id, home="orders",
        steps=ORDER.steps[:1],
    )  # fmt: skip
    with pytest.raises(ValueError, match="'refund' is not one this process runs"):
        serving_nothing.start(other)


def test_a_key_s_messages_leave_in_order_even_when_one_fails(orders_db):
    first, second = _write(orders_db, "order-1", 2)
    [other] = _write(orders_db, "order-2", 1)
    recorder = Recorder(fail_on={message_id("orders", first)})
    relay = Relay(
        [Outbox("orders", orders_db, OrdersOutbox)],
        recorder.send,
        lambda *a: None,
        backoff=lambda n: 0,
    )

    relay.run_once()  # the first of order-1 fails: its second waits; order-2 goes
    assert recorder.sent == [message_id("orders", other)]
    while relay.run_once():  # a key's next message leaves once the one before it has
        pass
    assert recorder.sent[1:] == [message_id("orders", first), message_id("orders", second)]
    assert Outbox("orders", orders_db, OrdersOutbox).pending() == 0


@pytest.fixture(scope="module")
def redis_client(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("relay-redis")).start()
    client = redis_lib.Redis.from_url(server.url)
    yield client
    client.close()
    server.stop()


def test_an_idle_relay_waits_for_a_nudge_and_comes_at_once(orders_db, redis_client):
    counted = Outbox("orders", orders_db, OrdersOutbox)
    claims = []
    claim = counted.claim
    counted.claim = lambda *a, **k: claims.append(1) or claim(*a, **k)  # count its queries
    recorder = Recorder()
    wakeup = Wakeup(redis_client, key="test:relay:wakeup")
    # An idle poll far longer than the test: only a nudge can bring the relay back.
    relay = Relay([counted], recorder.send, lambda *a: None, wakeup=wakeup, idle_poll=600)
    stop = threading.Event()
    loop = threading.Thread(target=relay.run, args=(stop,), daemon=True)
    loop.start()
    try:
        wait_for(lambda: claims, 10, what="the relay's first look")
        time.sleep(1.5)
        idle_claims = len(claims)
        # A writer whose fast path fails (the broker refused it) nudges the relay.
        [row] = _write(orders_db, "order-1", 1)
        mid = message_id("orders", row)
        writer = Relay(
            [Outbox("orders", orders_db, OrdersOutbox)],
            Recorder(fail_on={mid}).send,
            lambda *a: None,
            backoff=lambda n: 0,
            wakeup=wakeup,
        )
        assert writer.send_held(writer.outboxes[0], row, "stream", {"n": 0}, False) is False
        wait_for(lambda: mid in recorder.sent, 10, what="the nudged relay to send the row")
    finally:
        stop.set()
        loop.join(5)
    assert idle_claims == 1  # idle, it looked once, not five times a second
    assert not loop.is_alive()


def test_two_relays_never_send_the_same_row(orders_db):
    for key in range(40):
        _write(orders_db, f"order-{key}", 3)
    sent: list[str] = []
    lock = threading.Lock()

    def send(kind, payload, mid):
        time.sleep(0.001)
        with lock:
            sent.append(mid)

    relays = [
        Relay([Outbox("orders", orders_db, OrdersOutbox)], send, lambda *a: None) for _ in range(2)
    ]

    def drain(relay):
        while relay.run_once():
            pass

    threads = [threading.Thread(target=drain, args=(r,)) for r in relays]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(sent) == 120 and len(set(sent)) == 120
    # Per key, in the order written.
    by_key = {}
    with orders_db.read() as session:
        for row in session.scalars(select(OrdersOutbox).order_by(OrdersOutbox.id)):
            by_key.setdefault(row.key, []).append(message_id("orders", row.id))
    for key, ids in by_key.items():
        assert [m for m in sent if m in ids] == ids, key


def test_a_message_that_keeps_failing_is_parked(orders_db):
    [row] = _write(orders_db, "order-9", 1)
    parked = []
    relay = Relay(
        [Outbox("orders", orders_db, OrdersOutbox)],
        Recorder(fail_on={message_id("orders", row)}).send,
        lambda outbox, r, error: parked.append((r[0], error)),
        max_attempts=1,
        backoff=lambda n: 0,
    )
    relay.run_once()
    assert parked == [(row, "ConnectionError: broker unreachable")]
    assert Outbox("orders", orders_db, OrdersOutbox).pending() == 0  # parked, not pending


# --- end to end: a crash between the commit and the broker ------------------------------


@pytest.fixture(scope="module", params=MODES)
def stack(request, primary_backend, tmp_path_factory):
    """A crash between the commit and the broker, in each saga mode."""
    workdir = tmp_path_factory.mktemp(f"outbox-{request.param}")
    stack = Stack(primary_backend, workdir, SAGA_MODE=request.param)
    stack.start()
    yield stack
    stack.stop()


def test_an_api_killed_between_the_commit_and_the_broker_loses_nothing(stack):
    shop = stack.shop
    worker = stack.worker()
    # The API holds its start message for OUTBOX_LEASE_SECONDS; a relay takes it over after.
    api = stack.api(
        SAGA_FAULTS="start_saga:crash:1",
        SAGA_FAULTS_ENABLED="1",
        WEB_WORKERS="1",
        OUTBOX_LEASE_SECONDS="3",
    )
    try:
        user = shop.new_user(balance=1_000)
        product = shop.product(stock=10, price=100)
        status, _ = http(
            "POST",
            f"{api.url}/orders",
            {"items": [{"product_id": product, "quantity": 2}]},
            stack.credentials.customer(user),
        )
        assert status == 0  # the API process died after the commit: no answer
        [order] = shop.ok(
            shop.client.get("/orders?limit=5", headers=stack.credentials.customer(user))
        )
        done = shop.wait_order(order["order_id"], ("COMPLETED",))  # the relay sent it
    finally:
        api.stop()
        worker.stop()
    assert "injecting fault" in api.log()
    assert {s["name"]: s["attempts"] for s in done["steps"]}["create_order"] == 1
    assert shop.balance(user) == 800
    shop.check_invariants([done["order_id"]], product, 10, user, 1_000)


def test_a_start_message_sent_twice_starts_its_saga_once(stack):
    from sagaflow._outbox import start_message
    from sagaflow._sending import sender

    shop = stack.shop
    worker = stack.worker()
    try:
        user = shop.new_user(balance=1_000)
        product = shop.product(stock=10, price=100)
        order_id = shop.order(user, product)
        shop.wait_order(order_id, ("COMPLETED",))
        ctx = stack.rt.saga_log.context(order_id)
        # A relay that crashed after sending and before marking the row sends it again.
        with stack.rt.databases["orders"].read() as session:
            row = session.scalar(
                select(OrdersOutbox).where(OrdersOutbox.key == f"order-{order_id}")
            )
        send = sender(stack.runner)
        send(*start_message("order", ctx), message_id("orders", row.id))
        time.sleep(2)
    finally:
        worker.stop()
    assert "duplicate message" in worker.log()
    steps = {s["name"]: s for s in shop.get_order(order_id)["steps"]}
    assert steps["create_order"]["attempts"] == 1
    assert shop.balance(user) == 900


def test_in_choreography_each_service_announces_its_step_through_its_own_outbox(stack):
    import json

    from app.bootstrap import OUTBOXES

    shop = stack.shop
    worker = stack.worker()
    try:
        user = shop.new_user(balance=1_000)
        product = shop.product(stock=10, price=100)
        coupon = shop.coupon_for(user, discount=10)
        order_id = shop.order(user, product, issued_coupon_id=coupon)
        shop.wait_order(order_id, ("COMPLETED",))
        shop.wait_streamed(order_id)
    finally:
        worker.stop()

    announced = {}
    for service, table in OUTBOXES.items():
        with stack.rt.databases[service].read() as session:
            rows = session.scalars(
                select(table).where(table.key == f"order-{order_id}", table.kind == "event")
            ).all()
            announced[service] = [
                (json.loads(r.payload)["event"], r.sent_at is not None) for r in rows
            ]
    if stack.settings.saga_mode == "choreography":
        # Each step's service announces it (OrderCreated by orders, StockDecreased by
        # products, ...), all but the last, which nobody listens to: read from ORDER, so a
        # step on a new service is expected here with no edit.
        expected = {service: [] for service in OUTBOXES}
        for step in ORDER.steps[:-1]:
            expected[step.queue].append((step.event, True))
        assert announced == expected
        assert announced["orders"] == [("OrderCreated", True)]
    else:
        assert announced == {service: [] for service in OUTBOXES}  # the chain carries it
