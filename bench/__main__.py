"""`python -m bench [--quick] [--postgres] [--out bench/results]`: measure the order saga
against a raw Celery chain on the same Redis and machine, and against a monolith.

It starts everything it needs (a private Redis, fresh databases, the Procfile's worker and
web processes with `make run`'s default settings) and stops all of it at the end, also on
Ctrl-C or an error. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import ceiling, monolith, raw_chain, report, scenarios
from bench.memory import PeakRss, hwm_mb
from bench.stack import (
    WEB_THREADS,
    WEB_WORKERS,
    WORKER_CONCURRENCY,
    WORKER_POOL,
    WORKER_QUEUES,
    CeleryWorker,
    Gunicorn,
    Orchestrator,
    PostgresDatabases,
    RedisServer,
    Relay,
    SqliteDatabases,
    database_env,
    migrate,
)
from config.settings import REPO_ROOT, SAGA_MODES, SERVICES, Settings

PROFILES = {
    "quick": dict(
        raw_warmup=10,
        raw_latency=50,
        raw_saturation=300,
        saga_warmup=10,
        saga_latency=30,
        saga_saturation=150,
        failures=60,
        contention_orders=200,
        contention_products=5,
        contention_stock=24,
        coupon_requests=1000,
        coupon_quantity=100,
        monolith_latency=20,
    ),
    "full": dict(
        raw_warmup=20,
        raw_latency=300,
        raw_saturation=2000,
        saga_warmup=20,
        saga_latency=200,
        saga_saturation=1000,
        failures=300,
        contention_orders=1000,
        contention_products=5,
        contention_stock=120,
        coupon_requests=10000,
        coupon_quantity=100,
        monolith_latency=100,
    ),
}
# Variables config/settings.py reads: dropped from the inherited environment so every
# process runs with `make run`'s defaults, whatever the calling shell has set.
SETTING_PREFIXES = (
    "REDIS_URL",
    "PORT",
    "FLOWER_",
    "LOG_LEVEL",
    "STEP_",
    "BROKER_",
    "SAGA_",
    "DLQ_",
    "SLACK_",
    "VAR_DIR",
    "WEB_",
    "AUTH_",
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (under 2 minutes)")
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="fresh PostgreSQL databases on 127.0.0.1:5432 instead of SQLite",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "bench" / "results",
        help="where latest.json, latest.md and latest.png go",
    )
    parser.add_argument("--threads", type=int, default=16, help="concurrent HTTP submitters")
    parser.add_argument(
        "--modes",
        default="orchestration,choreography",
        help="saga modes to run side by side (SAGA_MODE); the first gets every scenario",
    )
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(args.modes) - set(SAGA_MODES))
    if not args.modes or unknown:
        parser.error(f"--modes: each is one of {', '.join(SAGA_MODES)}")
    return args


def customer_headers(settings: Settings):
    """user id -> an Authorization header for that customer, minted once (not timed)."""
    import functools

    from app.auth import CUSTOMER, Keyring

    keyring = Keyring(settings.auth_dir)
    keyring.init()

    @functools.cache
    def header(user_id: int) -> dict[str, str]:
        return {"Authorization": f"Bearer {keyring.mint(CUSTOMER, str(user_id), 86_400)}"}

    return header


def base_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(SETTING_PREFIXES) and not k.endswith("_DATABASE_URL")
    }
    return {**env, "PYTHONUNBUFFERED": "1"}


def settings_view(settings: Settings, counts: dict, threads: int, databases: str) -> dict:
    return {
        "databases": databases,
        "submitters": threads,
        "counts": counts,
        "worker": {
            "command": f"celery -A tasks.worker worker -Q {WORKER_QUEUES} "
            f"-P {WORKER_POOL} -c {WORKER_CONCURRENCY} --loglevel INFO",
            "concurrency": WORKER_CONCURRENCY,
            "pool": WORKER_POOL,
        },
        "web": {
            "command": "gunicorn -c config/gunicorn.py app.wsgi:app (gthread, "
            f"{WEB_WORKERS} workers x {WEB_THREADS} threads)",
            "workers": WEB_WORKERS,
            "threads": WEB_THREADS,
        },
        "raw_chain": {
            "app": "bench.raw_chain",
            "queues": "one task on each of the 5 queues",
            "delivery": "json, acks_late, prefetch 1, no result backend, events on",
        },
        "saga": {
            "log_level": settings.log_level,
            "step_soft_time_limit": settings.step_soft_time_limit,
            "step_time_limit": settings.step_time_limit,
            "step_max_retries": settings.step_max_retries,
            "step_retry_backoff": settings.step_retry_backoff,
            "step_retry_backoff_max": settings.step_retry_backoff_max,
            "broker_visibility_timeout": settings.broker_visibility_timeout,
            "broker_restore_interval": settings.broker_restore_interval,
            "faults_enabled": settings.faults_enabled,
        },
        "redis": "private redis-server, --save '' --appendonly no",
    }


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


class Bench:
    def __init__(self, args):
        self.args = args
        self.mode = "quick" if args.quick else "full"
        self.counts = PROFILES[self.mode]
        self.tmp = Path(tempfile.mkdtemp(prefix="saga-bench-"))
        self.logs = self.tmp / "logs"
        self.logs.mkdir()
        self.running: list = []  # everything to stop, in start order
        self.dbs = PostgresDatabases() if args.postgres else SqliteDatabases(self.tmp / "db")
        self.rss = PeakRss()
        self.memory: dict[str, float] = {}
        self.web_memory: dict[str, float] = {}
        self.memory_detail: dict[str, dict] = {}
        self.load_at_start = [round(x, 2) for x in os.getloadavg()]
        self.user_ids = itertools.count(1)  # shared by every mode's run: no id twice
        self._prefix = ""  # memory figures of a mode after the first are kept apart

    def start(self, thing):
        self.running.append(thing)
        return thing.start()

    def stop(self, thing) -> None:
        if thing in self.running:
            self.running.remove(thing)
        thing.stop()

    def close(self) -> None:
        self.rss.stop()
        for thing in reversed(self.running):
            try:
                thing.stop()
            except Exception as exc:  # keep stopping the rest
                say(f"could not stop {getattr(thing, 'name', thing)}: {exc!r}")
        self.running = []
        try:
            self.dbs.drop()
        except Exception as exc:
            say(f"could not drop the databases: {exc!r}")
        shutil.rmtree(self.tmp, ignore_errors=True)

    def run(self) -> dict:
        started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        self.rss.start()
        redis = self.start(RedisServer(self.tmp / "redis", self.logs))
        urls = self.dbs.create((*SERVICES, "monolith"))
        env = {
            **base_env(),
            "REDIS_URL": redis.url(0),
            "RAW_CHAIN_REDIS_URL": redis.url(1),
            "VAR_DIR": str(self.tmp),
            "AUTH_DIR": str(self.tmp / "auth"),
            **database_env(urls),
        }
        settings = Settings.from_env(env)
        view = settings_view(
            settings,
            self.counts,
            self.args.threads,
            "postgresql" if self.args.postgres else "sqlite",
        )
        say(f"{self.mode} mode; settings:\n{json.dumps(view, indent=2)}")
        unfair = raw_chain.fairness_diff()
        if unfair:
            say(f"WARNING: the raw chain's delivery settings differ from the saga's: {unfair}")
        migrate(env)

        raw = self.ceiling(env, redis)
        first, *others = self.args.modes
        saga_results = self.saga({**env, "SAGA_MODE": first}, settings, first, every=True)
        modes = {first: mode_figures(saga_results)}
        for mode in others:
            modes[mode] = mode_figures(self.saga({**env, "SAGA_MODE": mode}, settings, mode))
        mono = self.monolith(env, urls["monolith"])
        results = self.results(started, view, raw, saga_results, mono, unfair)
        results["saga_mode"] = first
        results["modes"] = modes
        return results

    def ceiling(self, env, redis) -> dict:
        c = self.counts
        worker = self.start(CeleryWorker("raw-worker", "bench.raw_chain", env, self.logs))
        self.rss.watch("worker", worker.pid)
        say(f"1. raw chain: {c['raw_latency']} one at a time, then {c['raw_saturation']} at once")
        raw = ceiling.run(redis.url(1), c["raw_warmup"], c["raw_latency"], c["raw_saturation"])
        self.memory["raw_chain"] = self.rss.take()["worker"]
        self.memory_detail["raw_chain"] = self.rss.last_detail.get("worker")
        self.memory["raw_chain_hwm_sum"] = round(hwm_mb(worker.pid), 1)
        say(
            f"   {raw['throughput']} chains/s, p50 {raw['p50_ms']} ms, p99 {raw['p99_ms']} ms, "
            f"worker peak RSS {self.memory['raw_chain']} MiB"
        )
        self.rss.unwatch("worker")
        self.stop(worker)
        return raw

    def _phase(self, name: str) -> None:
        name = f"{self._prefix}{name}"
        peaks = self.rss.take()
        self.memory[name] = peaks.get("worker")
        self.web_memory[name] = peaks.get("web")
        self.memory_detail[name] = self.rss.last_detail.get("worker")

    def saga(self, env, settings, mode: str, every: bool = False) -> dict:
        """Scenarios 2 to 4 in one saga mode (and 5, the coupon rush, with `every`), each
        mode on its own fresh processes."""
        from app.bootstrap import Services
        from config.settings import SERVICES

        c = self.counts
        worker = self.start(CeleryWorker(f"{mode}-worker", "tasks.worker", env, self.logs))
        orchestrator = self.start(Orchestrator(env, self.logs))
        relay = self.start(Relay(env, self.logs))
        web = self.start(Gunicorn(f"{mode}-web", "app.wsgi:app", env, self.logs))
        self.rss.watch("worker", worker.pid)
        self.rss.watch("web", web.pid)
        rt = Services(settings, SERVICES)
        try:
            shop = scenarios.Shop(
                rt, web.port, self.args.threads, customer_headers(settings), self.user_ids
            )
            scenarios.happy_latency(shop, c["saga_warmup"])  # every process warms up
            self.rss.take()
            cost = scenarios.OutboxCost(rt, relay.cpu_seconds)
            out = {"mode": mode}
            # The first mode's memory figures are the table's; the others' are kept apart.
            self._prefix = "" if every else f"{mode}:"
            say(f"[{mode}]")
            say(f"2. saga happy path: {c['saga_latency']} orders one at a time")
            out["latency"] = lat = scenarios.happy_latency(shop, c["saga_latency"])
            self._phase("saga_latency")
            say(
                f"   POST->COMPLETED p50 {lat['completed_ms']['p50']} ms, "
                f"p99 {lat['completed_ms']['p99']} ms; POST p99 {lat['post_ms']['p99']} ms"
            )
            say(f"2. saga happy path: {c['saga_saturation']} orders, {shop.threads} submitters")
            out["saturation"] = sat = scenarios.happy_saturation(shop, c["saga_saturation"])
            self._phase("saga_saturation")
            say(f"   {sat['throughput']} orders/s COMPLETED; statuses {sat['statuses']}")
            say(f"3. failure path: {c['failures']} orders failing at use_coupon")
            out["failure"] = fail = scenarios.failure_path(
                shop, c["failures"], sat.pop("coupons"), sat.pop("product")
            )
            sat.pop("users")
            self._phase("failure")
            say(f"   {fail['throughput']} orders/s FAILED; statuses {fail['statuses']}")
            say(
                f"4. contention: {c['contention_orders']} orders over "
                f"{c['contention_products']} products with stock {c['contention_stock']} each"
            )
            out["contention"] = cont = scenarios.contention(
                shop, c["contention_orders"], c["contention_products"], c["contention_stock"]
            )
            self._phase("contention")
            say(
                f"   {cont['throughput']} orders/s; {cont['statuses']}; invariants "
                f"{'hold' if cont['invariants']['ok'] else 'BROKEN'}: {cont['invariants']}"
            )
            out["outbox"] = cost.measure()
            say(f"   outbox: {out['outbox']}")
            if not every:
                return out
            say(
                f"5. coupon rush: {c['coupon_requests']} issue requests, quantity "
                f"{c['coupon_quantity']}"
            )
            out["coupons"] = cpn = scenarios.coupon_issuance(
                shop, c["coupon_requests"], c["coupon_quantity"]
            )
            self._phase("coupons")
            say(
                f"   {cpn['requests_per_s']} requests/s, {cpn['processed_per_s']} processed/s, "
                f"issued {cpn['issued']}"
            )
            self.memory["saga_hwm_sum"] = round(hwm_mb(worker.pid), 1)
        finally:
            rt.dispose()
            self.rss.unwatch("worker")
            self.rss.unwatch("web")
            for thing in (web, relay, orchestrator, worker):
                self.stop(thing)
        return out

    def monolith(self, env, url: str) -> dict:
        c = self.counts
        count = c["saga_saturation"] + c["monolith_latency"]
        users = list(range(1, count + 1))
        product, issued = monolith.seed(
            url,
            users,
            stock=count + 10,
            price=scenarios.PRICE,
            balance=10 * scenarios.PRICE,
            discount=scenarios.DISCOUNT,
        )
        web = self.start(
            Gunicorn(
                "monolith-web",
                "bench.monolith:create_app()",
                {**env, "MONOLITH_DATABASE_URL": url},
                self.logs,
            )
        )
        self.rss.watch("web", web.pid)
        say(
            f"6. monolith: {c['saga_saturation']} orders, {self.args.threads} submitters, "
            f"then {c['monolith_latency']} one at a time"
        )
        mono = monolith.measure(
            web.port, self.args.threads, users, product, issued, c["monolith_latency"]
        )
        mono["check"] = monolith.check(url, product, count + 10, count)
        self.web_memory["monolith"] = self.rss.take().get("web")
        self.rss.unwatch("web")
        self.stop(web)
        say(f"   {mono['throughput']} orders/s, p50 {mono['p50_ms']} ms; {mono['check']}")
        return mono

    def results(self, started, view, raw, saga, mono, unfair) -> dict:
        lat, sat = saga["latency"], saga["saturation"]
        saga_fig = {
            "throughput": sat["throughput"],
            "throughput_all_published": sat["throughput_all_published"],
            "p50_ms": lat["completed_ms"]["p50"],
            "p95_ms": lat["completed_ms"]["p95"],
            "p99_ms": lat["completed_ms"]["p99"],
            "published_p50_ms": lat["published_ms"]["p50"],
            "post_p50_ms": lat["post_ms"]["p50"],
            "post_p95_ms": lat["post_ms"]["p95"],
            "post_p99_ms": lat["post_ms"]["p99"],
            "latency_definition": "client send time of POST /orders to the saga log's "
            "finished_at of use_coupon (the step whose transaction sets "
            "COMPLETED); one order at a time",
            "latency": lat,
            "saturation": sat,
            "latency_samples_ms": lat.pop("latency_samples_ms"),
        }
        ratios = {
            "throughput_vs_raw": ratio(sat["throughput"], raw["throughput"]),
            "p50_vs_raw": ratio(saga_fig["p50_ms"], raw["p50_ms"]),
            "published_p50_vs_raw": ratio(saga_fig["published_p50_ms"], raw["p50_ms"]),
            "failure_vs_raw": ratio(saga["failure"]["throughput"], raw["throughput"]),
            "contention_vs_raw": ratio(saga["contention"]["throughput"], raw["throughput"]),
            "monolith_vs_raw": ratio(mono["throughput"], raw["throughput"]),
            "saga_vs_monolith": ratio(sat["throughput"], mono["throughput"]),
        }
        targets = [
            {
                "target": "saga throughput >= 0.7x raw chain",
                "measured": f"{ratios['throughput_vs_raw']}x",
                "met": (ratios["throughput_vs_raw"] or 0) >= 0.7,
            },
            {
                "target": "saga p50 <= 1.5x raw chain p50",
                "measured": f"{ratios['p50_vs_raw']}x",
                "met": (ratios["p50_vs_raw"] or 99) <= 1.5,
            },
            {
                "target": "POST /orders p99 < 25 ms at low load",
                "measured": f"{saga_fig['post_p99_ms']} ms",
                "met": saga_fig["post_p99_ms"] < 25,
            },
        ]
        return {
            "mode": self.mode,
            "databases": view["databases"],
            "started_at": started,
            "raw_chain": raw,
            "saga": saga_fig,
            "failure": saga["failure"],
            "contention": saga["contention"],
            "coupons": saga["coupons"],
            "monolith": mono,
            "ratios": ratios,
            "targets": targets,
            "memory_mb": self.memory,
            "memory_detail": self.memory_detail,
            "web_memory_mb": self.web_memory,
            "machine": {**report.machine(), "load_average_at_start": self.load_at_start},
            "settings": {**view, "raw_chain_fairness_diff": unfair},
            "notes": "Everything (bench client, Redis, workers, gunicorn, databases) shares one "
            "machine; other processes running at the same time make the numbers noisy.",
        }


def mode_figures(run: dict) -> dict:
    """One mode's headline figures, for the side-by-side table."""
    lat, sat = run["latency"], run["saturation"]
    return {
        "throughput": sat["throughput"],
        "p50_ms": lat["completed_ms"]["p50"],
        "p99_ms": lat["completed_ms"]["p99"],
        "published_p50_ms": lat["published_ms"]["p50"],
        "post_p50_ms": lat["post_ms"]["p50"],
        "failure_throughput": run["failure"]["throughput"],
        "contention_throughput": run["contention"]["throughput"],
        "invariants_hold": run["contention"]["invariants"]["ok"],
        "outbox": run["outbox"],
    }


def main(argv=None) -> int:
    args = parse_args(argv)

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    bench = Bench(args)
    began = time.monotonic()
    try:
        results = bench.run()
    except KeyboardInterrupt:
        say("interrupted: stopping everything")
        return 130
    finally:
        bench.close()
    results["duration_s"] = round(time.monotonic() - began, 1)
    table = report.write(results, args.out)
    print()
    print(table)
    say(f"wrote {args.out / 'latest.json'}, latest.md, latest.png in {results['duration_s']} s")
    return 0 if all(m["invariants_hold"] for m in results["modes"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
