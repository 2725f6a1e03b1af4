"""How fast the operator console and /metrics answer with many orders: `python -m bench.console`
(`--orders 10000`, `--entries 200`). Fills fresh SQLite databases and a private Redis with
that many orders, each with its saga's log, parks some in the DLQ, then times each page
through the Flask app in-process (server time only: no network, no browser)."""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from app.workflows import SERVICES
from bench.client import percentiles
from bench.stack import RedisServer, database_env, migrate

STATUSES = ["COMPLETED"] * 80 + ["FAILED"] * 15 + ["NEEDS_ATTENTION"] * 3 + ["PENDING"] * 2
STEPS = ["create_order", "decrease_stock", "use_balance", "use_coupon", "publish_order"]


def fill(orders_db: Path, orders: int) -> None:
    import sqlite3

    now = datetime.now(UTC)
    con = sqlite3.connect(orders_db)
    order_rows, item_rows, instances, steps = [], [], [], []
    for order_id in range(1, orders + 1):
        status = random.choice(STATUSES)
        at = (now - timedelta(seconds=orders - order_id)).strftime("%Y-%m-%d %H:%M:%S.%f")
        order_rows.append((order_id, random.randint(1, 2000), status, 100, 0, 100, at, at))
        item_rows.append((order_id, 1, 1, 100))
        saga = f"order-{order_id}"
        ctx = json.dumps(
            {"order_id": order_id, "user_id": 1, "items": [], "total": 100, "discount": 0,
             "paid": 100}
        )  # fmt: skip
        instances.append((saga, "order", str(order_id), status, ctx, at, at))
        for position, name in enumerate(STEPS):
            kind = "after_pivot" if name == "publish_order" else "step"
            steps.append((saga, name, kind, position, "succeeded", 1, "vm:bench", at, at, at))
    con.executemany(
        "INSERT INTO orders (id, user_id, status, total, discount, paid, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        order_rows,
    )
    con.executemany(
        "INSERT INTO order_items (order_id, product_id, quantity, unit_price) VALUES (?,?,?,?)",
        item_rows,
    )
    con.executemany(
        "INSERT INTO sagaflow_instances (saga_id, workflow, business_key, status, turned_back,"
        " context, created_at, updated_at) VALUES (?, ?, ?, ?, 0, ?, ?, ?)",
        instances,
    )
    con.executemany(
        "INSERT INTO sagaflow_steps (saga_id, name, kind, position, status, attempts, worker,"
        " started_at, finished_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
        steps,
    )
    con.commit()
    con.close()


def park(store, entries: int) -> None:
    for order_id in range(1, entries + 1):
        store.push(
            saga_id=f"order-{order_id}",
            workflow="order",
            name="use_balance",
            kind="step",
            task="order.use_balance",
            args={"saga_id": f"order-{order_id}", "ctx": None, "then": []},
            error_class="SoftTimeLimitExceeded",
            error="SoftTimeLimitExceeded: The soft time limit has been exceeded.",
            traceback="",
        )


def time_it(client, path: str, headers: dict, times: int) -> dict:
    samples = []
    for _ in range(times):
        start = time.perf_counter()
        response = client.get(path, headers=headers)
        samples.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    return percentiles(samples)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.console")
    parser.add_argument("--orders", type=int, default=10_000)
    parser.add_argument("--entries", type=int, default=200, help="DLQ entries")
    parser.add_argument("--times", type=int, default=20, help="requests per page")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-console-"))
    redis = RedisServer(work / "redis", work).start()
    env = {
        **{k: v for k, v in os.environ.items() if not k.endswith("_DATABASE_URL")},
        "REDIS_URL": redis.url(0),
        "AUTH_DIR": str(work / "auth"),
        **database_env({s: f"sqlite:///{work / f'{s}.db'}" for s in SERVICES}),
    }
    try:
        migrate(env)
        started = time.perf_counter()
        fill(work / "orders.db", args.orders)
        filled = time.perf_counter() - started
        os.environ.update(env)
        from app import create_app
        from app.auth import OPERATOR, Keyring
        from config.settings import Settings

        keys = Keyring(work / "auth")
        keys.init()
        app = create_app(Settings.from_env())
        park(app.extensions["runner"].dead_letters, args.entries)
        client = app.test_client()
        client.set_cookie("console_token", keys.mint(OPERATOR, "bench", 3600), path="/console")
        bearer = {"Authorization": f"Bearer {keys.mint(OPERATOR, 'bench', 3600)}"}
        pages = {
            "/console/ (counts and the newest 50)": ("/console/", {}),
            "/console/?status=FAILED": ("/console/?status=FAILED", {}),
            "/console/?q=user:7": ("/console/?q=user:7", {}),
            f"/console/?before={args.orders // 2} (a page deep down)": (
                f"/console/?before={args.orders // 2}",
                {},
            ),
            "/console/orders/<id>": (f"/console/orders/{args.orders // 3}", {}),
            f"/console/dlq ({args.entries} entries)": ("/console/dlq", {}),
            "/metrics (scrape)": ("/metrics", bearer),
        }
        print(
            f"{args.orders} orders ({filled:.1f} s to fill), {args.entries} DLQ entries; "
            f"ms per request, {args.times} requests each, in-process (server time)"
        )
        print("| page | p50 | p95 | max |\n|---|---|---|---|")
        for label, (path, headers) in pages.items():
            client.get(path, headers=headers)  # warm up
            found = time_it(client, path, headers, args.times)
            print(f"| {label} | {found['p50']} | {found['p95']} | {found['max']} |")
        app.extensions["services"].dispose()
    finally:
        redis.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
