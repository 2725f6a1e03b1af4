"""`python -m bench`: the order saga measured against its peers, and what each order costs.

`python -m bench [--quick] [--postgres] [--out bench/results]` runs, in the same run, on
the same Redis, databases and machine: a raw no-op Celery chain (the ceiling), the naive
chain (the same business transactions, no saga machinery: the floor), the saga, DBOS
Transact, and a monolith, each with what it costs per order (bench/cost.py).

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

from app.workflows import SERVICES
from bench import ceiling, cost, monolith, peers, raw_chain, report, scenarios
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
    SpanSink,
    SqliteDatabases,
    database_env,
    migrate,
)
from config.settings import REPO_ROOT, SAGA_MODES, Settings

PROFILES = {
    # Proves the code runs end to end (a few dozen orders); its numbers mean nothing.
    "smoke": dict(
        raw_warmup=3,
        raw_latency=5,
        raw_saturation=20,
        saga_warmup=3,
        saga_latency=5,
        saga_saturation=24,
        failures=12,
        contention_orders=20,
        contention_products=2,
        contention_stock=6,
        coupon_requests=30,
        coupon_quantity=5,
        monolith_latency=5,
        idle_seconds=3,
    ),
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
        idle_seconds=10,
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
        # The saga's stack, the naive chain's and DBOS's with no orders, each this long.
        idle_seconds=30,
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
    "RATE_",
    "NAIVE_",
    "DBOS_",
    "OTEL_",  # tracing: off unless --tracing turns it on for its own run
)
PEERS = ("naive", "dbos")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (a few minutes)")
    parser.add_argument(
        "--smoke", action="store_true", help="a few dozen orders: proves it runs, measures nothing"
    )
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
    parser.add_argument(
        "--peers",
        default=",".join(PEERS),
        help="peers to run besides the raw chain and the monolith: naive, dbos (default both)",
    )
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="also run the first --modes entry with tracing on (OTLP/HTTP to a local span "
        "sink, bench/otlp_sink.py), side by side with it off",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead: record the saga's stack with py-spy during the happy-path throughput "
        "run (first --modes entry) and write profile.md (bench/profile.py)",
    )
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(args.modes) - set(SAGA_MODES))
    if not args.modes or unknown:
        parser.error(f"--modes: each is one of {', '.join(SAGA_MODES)}")
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if sorted(set(args.peers) - set(PEERS)):
        parser.error(f"--peers: each is one of {', '.join(PEERS)}")
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
            "delivery": "json, acks_late, prefetch 1, no result backend, no task events",
        },
        "naive_chain": {
            "app": "bench.naive_chain (worker started like the saga's)",
            "web": "gunicorn 'bench.naive_chain:create_app()' (config/gunicorn.py)",
            "delivery": "the saga's",
        },
        "dbos": {
            "web": "gunicorn 'bench.dbos_peer:create_app()' (config/gunicorn.py): "
            f"{WEB_WORKERS} processes, each a DBOS executor running each workflow on a thread",
            "system_database": "its own database on the same server (or SQLite file)",
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
        self.mode = "smoke" if args.smoke else "quick" if args.quick else "full"
        self.counts = PROFILES[self.mode]
        self.tmp = Path(tempfile.mkdtemp(prefix="saga-bench-"))
        self.logs = self.tmp / "logs"
        self.logs.mkdir()
        self.running: list = []  # everything to stop, in start order
        self.dbs = PostgresDatabases() if args.postgres else SqliteDatabases(self.tmp / "db")
        self.rss = PeakRss()
        self.meter: cost.Meter | None = None
        self.memory: dict[str, float] = {}
        self.web_memory: dict[str, float] = {}
        self.memory_detail: dict[str, dict] = {}
        self.idle: dict[str, dict] = {}
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

    def setup(self):
        """Redis, the databases (the five services', the monolith's, DBOS's system
        database), the environment every process gets, the schema, and the meter."""
        import redis as redis_py

        self.rss.start()
        redis = self.start(RedisServer(self.tmp / "redis", self.logs))
        names = (*SERVICES, "monolith", "dbos")
        urls = self.dbs.create(names)
        env = {
            **base_env(),
            "REDIS_URL": redis.url(0),
            "RAW_CHAIN_REDIS_URL": redis.url(1),
            "NAIVE_REDIS_URL": redis.url(2),
            "DBOS_PEER_REDIS_URL": redis.url(3),
            "DBOS_SYSTEM_DATABASE_URL": urls["dbos"],
            "VAR_DIR": str(self.tmp),
            "AUTH_DIR": str(self.tmp / "auth"),
            **database_env(urls),
        }
        postgres = None
        if self.args.postgres:
            databases = {name: f"{self.dbs.prefix}_{name}" for name in names}
            postgres = cost.Postgres(self.dbs.admin_url, databases)
            if postgres.postmaster is None:
                say("WARNING: the PostgreSQL server's processes are not visible here")
        self.meter = cost.Meter(redis_py.Redis.from_url(redis.url(0)), redis.pid, postgres)
        migrate(env)
        return redis, urls, env

    def window(
        self, roots: dict[str, int], databases: bool = True, redis: bool = True
    ) -> cost.Window:
        """A cost window over these stack processes (label -> pid), Redis, and (with
        `databases`, on PostgreSQL) the database server."""
        return cost.Window(self.meter, roots, databases, redis)

    def run(self) -> dict:
        started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        redis, urls, env = self.setup()
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

        raw = self.ceiling(env, redis)
        naive = self.naive(env, settings, redis) if "naive" in self.args.peers else None
        first, *others = self.args.modes
        saga_results = self.saga({**env, "SAGA_MODE": first}, settings, first, every=True)
        modes = {first: mode_figures(saga_results)}
        for mode in others:
            modes[mode] = mode_figures(self.saga({**env, "SAGA_MODE": mode}, settings, mode))
        if self.args.tracing:
            modes[f"{first}, traced"] = self.traced(env, settings, first)
        dbos = self.dbos(env, settings, urls["dbos"]) if "dbos" in self.args.peers else None
        mono = self.monolith(env, urls["monolith"])
        results = self.results(started, view, raw, saga_results, mono, unfair, naive, dbos)
        results["saga_mode"] = first
        results["modes"] = modes
        return results

    def traced(self, env, settings, mode: str) -> dict:
        """The saga in `mode` on fresh processes with tracing on: every span built and
        exported (OTLP/HTTP, the SDK's default batching) to a local sink. What the saga's
        processes spend on it is in their CPU; the sink's, as a collector's, is not."""
        sink = self.start(SpanSink(env, self.logs))
        try:
            traced_env = {**env, "SAGA_MODE": mode, "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint}
            return mode_figures(self.saga(traced_env, settings, f"{mode}-traced"))
        finally:
            self.stop(sink)
            say(f"   span sink: {sink.log_text().strip().splitlines()[-1:] or 'no count'}")

    def ceiling(self, env, redis) -> dict:
        c = self.counts
        worker = self.start(CeleryWorker("raw-worker", "bench.raw_chain", env, self.logs))
        self.rss.watch("worker", worker.pid)
        say(f"1. raw chain: {c['raw_latency']} one at a time, then {c['raw_saturation']} at once")
        window = self.window({"worker": worker.pid}, databases=False)
        raw = ceiling.run(
            redis.url(1), c["raw_warmup"], c["raw_latency"], c["raw_saturation"], window
        )
        self.memory["raw_chain"] = self.rss.take()["worker"]
        self.memory_detail["raw_chain"] = self.rss.last_detail.get("worker")
        self.memory["raw_chain_hwm_sum"] = round(hwm_mb(worker.pid), 1)
        say(
            f"   {raw['throughput']} chains/s, p50 {raw['p50_ms']} ms, p99 {raw['p99_ms']} ms, "
            f"worker peak RSS {self.memory['raw_chain']} MiB; {cost_line(raw['cost'])}"
        )
        self.rss.unwatch("worker")
        self.stop(worker)
        return raw

    def _shop(self, settings, port: int):
        """The bench's view of a running stack on `port`; its own commits are not charged."""
        from app.bootstrap import Services

        rt = Services(settings, SERVICES)
        self.meter.count_own_commits(rt.databases)
        shop = scenarios.Shop(
            rt, port, self.args.threads, customer_headers(settings), self.user_ids
        )
        return rt, shop

    def naive(self, env, settings, redis) -> dict:
        """The naive chain: its worker and its POST endpoint, latency then throughput."""
        import redis as redis_py

        c = self.counts
        worker = self.start(CeleryWorker("naive-worker", "bench.naive_chain", env, self.logs))
        web = self.start(Gunicorn("naive-web", "bench.naive_chain:create_app()", env, self.logs))
        self.rss.watch("worker", worker.pid)
        rt, shop = self._shop(settings, web.port)
        client = redis_py.Redis.from_url(redis.url(2))
        roots = {"worker": worker.pid, "web": web.pid}
        try:
            peers.naive_latency(shop, client, c["saga_warmup"])
            self.idle["naive_chain"] = idle = self.meter.idle(roots, c["idle_seconds"])
            say(f"   naive chain idle: {idle_line(idle)}")
            self.rss.take()
            say(f"2n. naive chain: {c['saga_latency']} orders one at a time")
            lat = peers.naive_latency(shop, client, c["saga_latency"])
            say(f"   POST->COMPLETED p50 {lat['completed_ms']['p50']} ms")
            say(f"2n. naive chain: {c['saga_saturation']} orders, {shop.threads} submitters")
            sat = peers.naive_saturation(shop, client, c["saga_saturation"], self.window(roots))
            self.memory["naive_saturation"] = self.rss.take().get("worker")
            say(f"   {sat['throughput']} orders/s COMPLETED; {cost_line(sat['cost'])}")
        finally:
            client.close()
            rt.dispose()
            self.rss.unwatch("worker")
            for thing in (web, worker):
                self.stop(thing)
        return {"latency": lat, "saturation": sat}

    def dbos(self, env, settings, system_url: str) -> dict:
        """DBOS Transact: gunicorn with a DBOS executor in each worker; latency, throughput,
        and the failure path."""
        from bench import dbos_peer  # imports dbos: only when this peer runs

        c = self.counts
        dbos_peer.migrate(system_url)
        web = self.start(Gunicorn("dbos-web", "bench.dbos_peer:create_app()", env, self.logs))
        self.rss.watch("web", web.pid)
        rt, shop = self._shop(settings, web.port)
        roots = {"web": web.pid}
        try:
            peers.dbos_latency(shop, c["saga_warmup"])
            self.idle["dbos"] = idle = self.meter.idle(roots, c["idle_seconds"])
            say(f"   DBOS idle: {idle_line(idle)}")
            self.rss.take()
            say(f"7. DBOS: {c['saga_latency']} orders one at a time")
            lat = peers.dbos_latency(shop, c["saga_latency"])
            say(f"   POST->COMPLETED p50 {lat['completed_ms']['p50']} ms")
            say(f"7. DBOS: {c['saga_saturation']} orders, {shop.threads} submitters")
            sat = peers.dbos_saturation(shop, c["saga_saturation"], self.window(roots))
            self.web_memory["dbos_saturation"] = self.rss.take().get("web")
            say(
                f"   {sat['throughput']} orders/s COMPLETED; statuses {sat['statuses']}; "
                f"{cost_line(sat['cost'])}"
            )
            say(f"7. DBOS: {c['failures']} orders failing at use_coupon")
            used = sat.pop("coupons")
            sat.pop("users")
            fail = peers.dbos_failure(shop, c["failures"], used, self.window(roots))
            say(f"   {fail['throughput']} orders/s FAILED; failed at {fail['failed_at']}")
        finally:
            rt.dispose()
            self.rss.unwatch("web")
            self.stop(web)
        return {"latency": lat, "saturation": sat, "failure": fail}

    def _phase(self, name: str) -> None:
        name = f"{self._prefix}{name}"
        peaks = self.rss.take()
        self.memory[name] = peaks.get("worker")
        self.web_memory[name] = peaks.get("web")
        self.memory_detail[name] = self.rss.last_detail.get("worker")

    def start_saga(self, env, mode: str) -> dict:
        """The Procfile's worker, orchestrator, relay and web processes, by label."""
        return {
            "worker": self.start(CeleryWorker(f"{mode}-worker", "tasks.worker", env, self.logs)),
            "orchestrator": self.start(Orchestrator(env, self.logs)),
            "relay": self.start(Relay(env, self.logs)),
            "web": self.start(Gunicorn(f"{mode}-web", "app.wsgi:app", env, self.logs)),
        }

    def saga(self, env, settings, mode: str, every: bool = False) -> dict:
        """Scenarios 2 to 4 in one saga mode (and 5, the coupon rush, and the idle cost,
        with `every`), each mode on its own fresh processes."""
        c = self.counts
        stack = self.start_saga(env, mode)
        worker, orchestrator, relay, web = stack.values()
        self.rss.watch("worker", worker.pid)
        self.rss.watch("web", web.pid)
        roots = {label: process.pid for label, process in stack.items()}
        rt, shop = self._shop(settings, web.port)
        try:
            scenarios.happy_latency(shop, c["saga_warmup"])  # every process warms up
            if every:
                self.idle["saga"] = idle = self.meter.idle(roots, c["idle_seconds"])
                say(f"   saga stack idle: {idle_line(idle)}")
            self.rss.take()
            outbox = scenarios.OutboxCost(rt, relay.cpu_seconds)
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
            out["saturation"] = sat = scenarios.happy_saturation(
                shop, c["saga_saturation"], self.window(roots)
            )
            self._phase("saga_saturation")
            say(
                f"   {sat['throughput']} orders/s COMPLETED; statuses {sat['statuses']}; "
                f"{cost_line(sat['cost'])}"
            )
            say(f"3. failure path: {c['failures']} orders failing at use_coupon")
            used = sat.pop("coupons")
            sat.pop("users")
            out["failure"] = fail = scenarios.failure_path(
                shop, c["failures"], used, self.window(roots)
            )
            self._phase("failure")
            say(
                f"   {fail['throughput']} orders/s FAILED; statuses {fail['statuses']}; "
                f"failed at {fail['failed_at']}; {cost_line(fail['cost'])}"
            )
            say(
                f"4. contention: {c['contention_orders']} orders over "
                f"{c['contention_products']} products with stock {c['contention_stock']} each"
            )
            out["contention"] = cont = scenarios.contention(
                shop,
                c["contention_orders"],
                c["contention_products"],
                c["contention_stock"],
                self.window(roots),
            )
            self._phase("contention")
            say(
                f"   {cont['throughput']} orders/s; {cont['statuses']}; invariants "
                f"{'hold' if cont['invariants']['ok'] else 'BROKEN'}: {cont['invariants']}"
            )
            out["outbox"] = outbox.measure()
            say(f"   outbox: {out['outbox']}")
            if not every:
                return out
            say(
                f"5. coupon rush: {c['coupon_requests']} issue requests, quantity "
                f"{c['coupon_quantity']}"
            )
            out["coupons"] = cpn = scenarios.coupon_issuance(
                shop, c["coupon_requests"], c["coupon_quantity"], self.window(roots)
            )
            self._phase("coupons")
            say(
                f"   {cpn['requests_per_s']} requests/s, {cpn['processed_per_s']} processed/s, "
                f"issued {cpn['issued']}; {cost_line(cpn['cost'])}"
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
            web.port,
            self.args.threads,
            users,
            product,
            issued,
            c["monolith_latency"],
            self.window({"web": web.pid}, redis=False),  # it uses no Redis
        )
        mono["check"] = monolith.check(url, product, count + 10, count)
        self.web_memory["monolith"] = self.rss.take().get("web")
        self.rss.unwatch("web")
        self.stop(web)
        say(
            f"   {mono['throughput']} orders/s, p50 {mono['p50_ms']} ms; {mono['check']}; "
            f"{cost_line(mono['cost'])}"
        )
        return mono

    def results(self, started, view, raw, saga, mono, unfair, naive, dbos) -> dict:
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
        peer_figs = {
            "raw_chain": {
                "throughput": raw["throughput"],
                "p50_ms": raw["p50_ms"],
                "p99_ms": raw["p99_ms"],
                "cost": raw["cost"],
            },
            "naive_chain": peer_figures(naive),
            "saga": {**peer_figures(saga), "throughput": sat["throughput"]},
            "dbos": peer_figures(dbos),
            "monolith": {
                "throughput": mono["throughput"],
                "p50_ms": mono["p50_ms"],
                "p99_ms": mono["latency_ms"]["p99"],
                "cost": mono["cost"],
            },
        }
        naive_fig, dbos_fig = peer_figs["naive_chain"], peer_figs["dbos"]
        saga_cpu = cpu_of(sat)
        ratios = {
            "throughput_vs_raw": ratio(sat["throughput"], raw["throughput"]),
            "p50_vs_raw": ratio(saga_fig["p50_ms"], raw["p50_ms"]),
            "published_p50_vs_raw": ratio(saga_fig["published_p50_ms"], raw["p50_ms"]),
            "failure_vs_raw": ratio(saga["failure"]["throughput"], raw["throughput"]),
            "contention_vs_raw": ratio(saga["contention"]["throughput"], raw["throughput"]),
            "monolith_vs_raw": ratio(mono["throughput"], raw["throughput"]),
            "saga_vs_monolith": ratio(sat["throughput"], mono["throughput"]),
            "cpu_vs_naive": ratio(saga_cpu, naive_fig and cpu_of(naive_fig)),
            "cpu_vs_dbos": ratio(saga_cpu, dbos_fig and cpu_of(dbos_fig)),
            "throughput_vs_dbos": ratio(sat["throughput"], dbos_fig and dbos_fig["throughput"]),
            "p50_vs_dbos": ratio(saga_fig["p50_ms"], dbos_fig and dbos_fig["p50_ms"]),
            "throughput_vs_naive": ratio(sat["throughput"], naive_fig and naive_fig["throughput"]),
        }
        idle = self.idle.get("saga", {})
        on_pg = view["databases"] == "postgresql"
        targets = [
            target("saga throughput >= 0.7x raw chain", ratios["throughput_vs_raw"], 0.7, ">="),
            target("saga p50 <= 1.5x raw chain p50", ratios["p50_vs_raw"], 1.5, "<="),
            target("POST /orders p99 < 25 ms at low load", saga_fig["post_p99_ms"], 25, "<", " ms"),
            target(
                "saga CPU per COMPLETED order <= 1.3x the naive chain's",
                ratios["cpu_vs_naive"],
                1.3,
                "<=",
            ),
            target("saga CPU per COMPLETED order < DBOS's", ratios["cpu_vs_dbos"], 1.0, "<"),
            target(
                "saga happy-path throughput >= 1.5x DBOS's (PostgreSQL)",
                ratios["throughput_vs_dbos"],
                1.5,
                ">=",
                applies=on_pg,
            ),
            target(
                "saga p50 <= DBOS's p50 (PostgreSQL)",
                ratios["p50_vs_dbos"],
                1.0,
                "<=",
                applies=on_pg,
            ),
            target(
                "saga stack idle <= 10 ms CPU per s",
                idle.get("cpu_ms_per_s"),
                10,
                "<=",
                " ms/s",
            ),
            target(
                "saga stack idle <= 1 commit per s",
                idle.get("commits_per_s"),
                1,
                "<=",
                "/s",
                applies=on_pg,
            ),
        ]
        costs = {
            "raw_chain": raw["cost"],
            "naive_chain": naive and naive["saturation"]["cost"],
            "saga_happy": sat["cost"],
            "saga_failure": saga["failure"]["cost"],
            "saga_contention": saga["contention"]["cost"],
            "saga_coupons": saga["coupons"]["cost"],
            "dbos_happy": dbos and dbos["saturation"]["cost"],
            "dbos_failure": dbos and dbos["failure"]["cost"],
            "monolith": mono["cost"],
        }
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
            "naive_chain": naive,
            "dbos": dbos,
            "peers": peer_figs,
            "costs": costs,
            "idle": self.idle,
            "ratios": ratios,
            "targets": targets,
            "memory_mb": self.memory,
            "memory_detail": self.memory_detail,
            "web_memory_mb": self.web_memory,
            "machine": {**report.machine(), "load_average_at_start": self.load_at_start},
            "settings": {**view, "raw_chain_fairness_diff": unfair},
            "notes": "Everything (bench client, Redis, workers, gunicorn, databases) shares one "
            "machine; other processes running at the same time make the numbers noisy, and "
            "on PostgreSQL the server's CPU includes every other client's.",
        }


def cpu_of(figures: dict | None):
    cost_ = figures and figures.get("cost")
    return cost_ and cost_.get("cpu_ms")


def peer_figures(run: dict | None) -> dict | None:
    """A peer's (or the saga's) happy-path headline figures, for the peers table."""
    if run is None:
        return None
    lat, sat = run["latency"], run["saturation"]
    return {
        "throughput": sat["throughput"],
        "p50_ms": lat["completed_ms"]["p50"],
        "p99_ms": lat["completed_ms"]["p99"],
        "published_p50_ms": lat["published_ms"]["p50"],
        "post_p50_ms": lat["post_ms"]["p50"],
        "cost": sat["cost"],
        "failure": run.get("failure"),
    }


def target(name, measured, limit, op, unit="x", applies=True) -> dict:
    """One target from the issue: met is None when it was not measured, or does not apply
    to this run's databases."""
    checks = {">=": lambda v: v >= limit, "<=": lambda v: v <= limit, "<": lambda v: v < limit}
    met = checks[op](measured) if measured is not None and applies else None
    shown = "n/a" if measured is None else f"{measured}{unit}"
    if not applies:
        shown += " (applies to PostgreSQL)"
    return {"target": name, "measured": shown, "met": met}


def cost_line(c: dict | None) -> str:
    if not c:
        return "cost n/a"
    commits = "n/a" if c["commits"] is None else c["commits"]
    return (
        f"CPU {c['cpu_ms']} ms, commits {commits}, Redis commands {c['redis_commands']} per order"
    )


def idle_line(i: dict) -> str:
    commits = "n/a" if i["commits_per_s"] is None else i["commits_per_s"]
    return (
        f"CPU {i['cpu_ms_per_s']} ms/s {i['cpu_ms_per_s_by_process']}, commits {commits}/s, "
        f"Redis {i['redis_commands_per_s']} commands/s"
    )


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
        "cpu_ms_per_order": cpu_of(sat),
        "commits_per_order": (sat.get("cost") or {}).get("commits"),
        "redis_per_order": (sat.get("cost") or {}).get("redis_commands"),
    }


def main(argv=None) -> int:
    args = parse_args(argv)

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    if args.profile:
        from bench import profile

        return profile.run(args)
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
