"""A worker's main process killed by SIGKILL (what Kubernetes does after the grace period)
while it holds running, prefetched and retry-waiting messages: every order still completes
and is published exactly once, through the broker's own redelivery (no DLQ needed), and
the test reports how long that took."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest

from config.settings import Settings
from tests.stack import Stack
from tests.support import wait_for

# The visibility timeout is the recovery time after a SIGKILL; the defaults (120 s, a
# 10 s restore sweep) are scaled down here so the test runs in seconds. The stall check
# is set far beyond it: recovery must come from redelivery, not from the DLQ backstop.
TIMINGS = {
    "STEP_SOFT_TIME_LIMIT": "2",
    "STEP_TIME_LIMIT": "4",
    # Retries wait 3 s, so a worker holds them (unacknowledged, with an ETA) meanwhile.
    "STEP_RETRY_BACKOFF": "3",
    "STEP_RETRY_BACKOFF_MAX": "3",
    "STEP_RETRY_JITTER": "0",
    "BROKER_VISIBILITY_TIMEOUT": "10",
    "BROKER_RESTORE_INTERVAL": "1",
    "SAGA_STALL_SECONDS": "600",
}
if os.environ.get("SIGKILL_DRILL_DEFAULTS") == "1":
    # Measure recovery with the shipped redelivery and stall defaults (takes minutes).
    _defaults = Settings()
    TIMINGS.update(
        BROKER_VISIBILITY_TIMEOUT=str(_defaults.broker_visibility_timeout),
        BROKER_RESTORE_INTERVAL=str(_defaults.broker_restore_interval),
        SAGA_STALL_SECONDS=str(_defaults.saga_stall_seconds),
    )
ORDERS = 8


@pytest.fixture(scope="module")
def stack(primary_backend, tmp_path_factory):
    stack = Stack(primary_backend, tmp_path_factory.mktemp("sigkill"), **TIMINGS).start()
    yield stack
    stack.stop()


def test_worker_main_process_killed_by_sigkill_loses_nothing(stack, capsys):
    shop = stack.shop
    user = shop.new_user(balance=100_000)
    product = shop.product(stock=100, price=100)
    # Every order's stock step overruns once: while it runs, later messages wait
    # prefetched, and earlier ones wait for their retry, all unacknowledged.
    worker = stack.worker(faults="decrease_stock:timeout:1")
    order_ids = [shop.order(user, product, quantity=1) for _ in range(ORDERS)]
    redis = stack.rt.redis

    def holding_several():
        running = [o for o in order_ids if "running" in stack.rt.saga_log.statuses(o).values()]
        return redis.hlen("unacked") >= 3 and running

    wait_for(holding_several, 30, interval=0.05, what="the worker to hold several messages")
    held = redis.hlen("unacked")
    killed_at = time.monotonic()
    worker.kill(main_only=True)
    # The pool's children find their parent gone; whatever lingers is killed as the
    # container runtime would.
    time.sleep(1)
    orphans = worker.group_members()
    for pid in orphans:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    visibility = int(TIMINGS["BROKER_VISIBILITY_TIMEOUT"])
    again = stack.worker()
    try:
        for order_id in order_ids:
            shop.wait_order(order_id, ("COMPLETED",), timeout=90 + visibility)
        wait_for(
            lambda: all(shop.published(o) == 1 for o in order_ids), 60, what="every publication"
        )
        recovered_in = time.monotonic() - killed_at
    finally:
        again.stop()
    with capsys.disabled():
        print(
            f"\n  SIGKILL of a worker holding {held} unacknowledged messages "
            f"(visibility timeout {TIMINGS['BROKER_VISIBILITY_TIMEOUT']} s): all {ORDERS} "
            f"orders completed and published {recovered_in:.1f} s after the kill"
            f" ({len(orphans)} pool children outlived the main process)"
        )

    for order_id in order_ids:
        assert shop.wait_streamed(order_id) == 1
    assert stack.rt.dead_letters.entries() == []  # redelivery did it, not the DLQ
    assert shop.stock(product) == 100 - ORDERS
    assert shop.balance(user) == 100_000 - 100 * ORDERS
