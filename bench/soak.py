"""Bounded history under a long run (issue 19): `python -m bench.soak --postgres`
(`--orders 20000 --rounds 4`). The saga's real processes, as `make run` starts them, take
`--orders` orders in rounds; after each round the finished sagas are archived out of the
hot tables (`saga-dlq archive --older-than 0s`, the operator's command) and the bench
records Redis's memory and keys, the event stream's length, the hot and archive tables'
rows, and how fast the console answers for a live order and an archived one. Flat is the
goal: each round's figures like the one before, whatever has been done before it.

A final saga's Redis keys expire after SAGA_KEYS_GRACE_SECONDS, set here to its shortest
allowed value so that a round outlasts it; the last row is taken once more after one grace
with nothing running."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import text

from bench import scenarios
from bench.__main__ import Bench, parse_args, say
from bench.client import percentiles
from config.settings import REPO_ROOT, Settings

GRACE = 160  # s: the shortest SAGA_KEYS_GRACE_SECONDS the defaults allow (config/settings.py)
TABLES = ("sagaflow_instances", "sagaflow_steps", "sagaflow_archive", "orders")


def redis_figures(client) -> dict:
    streams = [k.decode() for k in client.scan_iter(match="sagaflow:*events", count=1000)]
    return {
        "used_memory_mb": round(client.info("memory")["used_memory"] / 2**20, 2),
        "keys": client.dbsize(),
        "stream_entries": sum(client.xlen(s) for s in streams if client.type(s) == b"stream"),
        "saga_keys": sum(
            1
            for pattern in (
                "sagaflow:done:*",
                "sagaflow:input:*",
                "sagaflow:fence:*",
                "sagaflow:deliveries:*",
            )
            for _ in client.scan_iter(match=pattern, count=1000)
        ),
        # One per message until the deliveries were kept per saga: none from this release.
        "per_message_keys": sum(1 for _ in client.scan_iter(match="sagaflow:delivered:*")),
    }


def table_rows(engine) -> dict:
    with engine.connect() as conn:
        return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in TABLES}


def console_ms_path(client, path: str, times: int = 20) -> dict:
    client.get(path)  # warm up
    samples = []
    for _ in range(times):
        start = time.perf_counter()
        response = client.get(path)
        samples.append((time.perf_counter() - start) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{path} answered {response.status_code}")
    return percentiles(samples)


def console_ms(client, order_id: int) -> dict:
    return console_ms_path(client, f"/console/orders/{order_id}")


def archive(env: dict) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "dlq", "archive", "--older-than", "0s", "--json"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"archive failed: {done.stderr.strip()}")
    return json.loads(done.stdout)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument(
        "--no-final-wait", action="store_true", help="skip the last row (one grace idle)"
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    bench = Bench(parse_args(["--quick", *(["--postgres"] if args.postgres else [])]))
    rows = []
    try:
        import redis as redis_py

        from app import create_app
        from app.auth import OPERATOR, Keyring

        redis, urls, env = bench.setup()
        env = {**env, "SAGA_KEYS_GRACE_SECONDS": str(GRACE)}
        settings = Settings.from_env(env)
        stack = bench.start_saga(env, "orchestration")
        rt, shop = bench._shop(settings, stack["web"].port)
        client = redis_py.Redis.from_url(redis.url(0))
        app = create_app(settings)  # the console, in-process: server time only
        console = app.test_client()
        keyring = Keyring(settings.auth_dir)
        keyring.init()
        token = keyring.mint(OPERATOR, "soak", 86_400)
        console.set_cookie("console_token", token, path="/console")
        per_round = args.orders // args.rounds
        engine = rt.databases["orders"].engine
        for number in range(1, args.rounds + 1):
            say(f"round {number}: {per_round} orders")
            sat = scenarios.happy_saturation(shop, per_round)
            newest = table_rows(engine)["orders"]  # ids count up from 1
            live = console_ms(console, newest)  # its saga still in the hot tables
            archived = archive(env)["archived"]
            row = {
                "round": number,
                "orders_so_far": number * per_round,
                "statuses": sat["statuses"],
                "throughput": sat["throughput"],
                "archived": archived,
                **redis_figures(client),
                **table_rows(engine),
                "console_order_ms_hot": live,
                "console_order_ms_archived": console_ms(console, newest),
                "console_first_order_ms": console_ms(console, 1),
                "console_index_ms": console_ms_path(console, "/console/"),
            }
            rows.append(row)
            say(json.dumps(row))
        if not args.no_final_wait:
            say(f"waiting one grace ({GRACE} s) with nothing running but the orchestrator")
            for label in ("worker", "relay", "web"):
                bench.stop(stack[label])
            time.sleep(GRACE + 5)
            rows.append({"round": "after one grace", **redis_figures(client)})
            say(json.dumps(rows[-1]))
        app.extensions["services"].dispose()
        rt.dispose()
    finally:
        bench.close()
    result = {
        "orders": args.orders,
        "rounds": args.rounds,
        "databases": "postgresql" if args.postgres else "sqlite",
        "grace_s": GRACE,
        "load_average": {"start": bench.load_at_start, "end": list(os.getloadavg())},
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak-latest.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
