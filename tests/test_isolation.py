"""Each service really is separate: one worker per service, each given only its own
database URL (and Redis); the orchestrator only the orders database; the DLQ worker only
Redis. The saga, its compensations and the DLQ's retries still work, and no process opened
a database that is not its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.workflows import SERVICES
from config.settings import REPO_ROOT
from tests.inspect_view import eid
from tests.stack import Stack


def only(*services: str) -> dict[str, str]:
    """An environment in which only these services' database URLs are set."""
    return {f"{s.upper()}_DATABASE_URL": "" for s in SERVICES if s not in services}


@pytest.fixture(scope="module")
def stack(request, tmp_path_factory):
    # SQLite: a database is a file, so what each process opened can be read off /proc.
    stack = Stack("sqlite", tmp_path_factory.mktemp("isolation"))
    stack.start()
    # Registered before the restarts below: one that fails still stops the stack, and
    # with it every process started on it (the relays included).
    request.addfinalizer(stack.stop)
    stack.restart_orchestrator(**only("orders"))
    # One relay per service with an outbox, each with its own database only.
    stack.relay.stop()
    stack.relay = stack.start_relay(SERVICES="orders", **only("orders"))
    stack.relays = [stack.relay, stack.start_relay(SERVICES="dataplatform", **only("dataplatform"))]
    return stack


@pytest.fixture(scope="module")
def workers(stack):
    started = {
        service: stack.worker(
            queues=(service,),
            concurrency=1,
            **only(service),
            **(
                {"SAGA_FAULTS": "decrease_stock:transient:3", "SAGA_FAULTS_ENABLED": "1"}
                if service == "products"
                else {}
            ),
        )
        for service in SERVICES
    }
    yield started
    for worker in started.values():
        worker.stop()


def _databases_open(pid: int) -> set[str]:
    """The SQLite files a process and its children hold open."""
    pids = [pid] + [
        int(p)
        for p in subprocess.run(
            ["pgrep", "-g", str(pid)], capture_output=True, text=True
        ).stdout.split()
    ]
    found = set()
    for each in pids:
        fd_dir = Path(f"/proc/{each}/fd")
        for fd in fd_dir.glob("*") if fd_dir.exists() else []:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.endswith(".db"):
                found.add(Path(target).stem)
    return found


def test_each_service_on_its_own_worker_completes_compensates_and_retries(stack, workers):
    shop = stack.shop
    dlq = stack.dlq_worker(**only())
    try:
        # Every order's stock step fails its worker's three tries and is parked; the DLQ
        # (Redis only) sends the retry back to the products worker. Then a completed order,
        # every step on its own service's worker...
        user = shop.new_user(balance=1_000)
        product = shop.product(stock=10, price=100)
        coupon = shop.coupon_for(user, discount=10)
        done_id = shop.order(user, product, issued_coupon_id=coupon)
        # ...and a refused one: the balance is too low; each undo runs on its own service.
        poor = shop.new_user(balance=50)
        failed_id = shop.order(poor, product, quantity=1)
        done = shop.wait_order(done_id, ("COMPLETED",), timeout=120)
        failed = shop.wait_order(failed_id, ("FAILED",), timeout=120)
    finally:
        dlq.stop()

    assert done["status"] == "COMPLETED"
    assert {s["name"]: s["status"] for s in done["steps"]}["publish_order"] == "succeeded"
    assert failed["status"] == "FAILED" and failed["failed_step"] == "use_balance"
    undone = [s for s in failed["steps"] if s["kind"] == "compensation"]
    assert [s["name"] for s in undone] == ["refund_balance", "restore_stock", "cancel_order"]
    assert shop.stock(product) == 10 - 1  # the refused order's stock came back
    assert all(s["status"] == "succeeded" for s in undone)
    workers_by_step = {s["name"]: s["worker"] for s in done["steps"]}
    for step, service in [("create_order", "orders"), ("decrease_stock", "products")]:
        assert workers_by_step[step].endswith(f":{service}"), workers_by_step
    for order in (done, failed):
        entry = stack.rt.dead_letters.get(eid(order["order_id"], "decrease_stock"))
        assert entry["status"] == "resolved", entry
    shop.check_invariants([done["order_id"]], product, 10, user, 1_000, coupon)
    assert shop.balance(poor) == 50

    # Nobody opened a database that is not its own.
    for service, worker in workers.items():
        assert _databases_open(worker.proc.pid) <= {service}, service
    assert _databases_open(stack.orchestrator.proc.pid) <= {"orders"}
    assert _databases_open(stack.relays[0].proc.pid) <= {"orders"}
    assert _databases_open(stack.relays[1].proc.pid) <= {"dataplatform"}


def test_a_worker_without_its_database_url_refuses_to_start(stack):
    env = {**os.environ, **stack.env, "PRODUCTS_DATABASE_URL": ""}
    started = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks.worker", "worker", "-Q", "products"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode != 0
    assert "PRODUCTS_DATABASE_URL not set" in started.stderr


def test_a_misrouted_message_names_the_service_the_worker_does_not_serve(stack, workers):
    from app.bootstrap import NotServed, Services

    services = Services(stack.settings, ("products",))
    try:
        with pytest.raises(NotServed, match="does not serve the balances service"):
            services.balances.use_balance("order-1", 1, 1)
    finally:
        services.dispose()
