"""The multi-host drill: `make drill` (root, Linux network namespaces).

Every service's worker runs on its own host (a network namespace) that can reach only
Redis and the database server, and holds the credentials of its own database only:

    driver (this process, 10.77.0.1) -- bridge --+-- redis     10.77.0.2   redis-server
                                                +-- db        10.77.0.3   PostgreSQL
                                                +-- api       10.77.0.4   web, orchestrator, DLQ
                                                +-- orders    10.77.0.10  worker -Q orders
                                                +-- products  10.77.0.11  worker -Q products
                                                ... one host per service

A service host has a /32 address and routes to the Redis and database hosts only, so it
cannot reach another service's host at all; the database server lets each service's role
into its own database only. The drill places an order that completes and one that is
refused and compensated, through the real API, then checks that a service host can reach
neither another host nor another service's database. Everything it made is removed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from app import API_SERVICES  # noqa: E402
from app.auth import ADMIN, CUSTOMER, Keyring  # noqa: E402
from app.workflows import SERVICES  # noqa: E402

SUBNET, DRIVER = "10.77.0", "10.77.0.1"
INFRA = {"redis": 2, "db": 3, "api": 4}
HOSTS = {**INFRA, **{service: 10 + i for i, service in enumerate(SERVICES)}}
PG_BIN = next(Path("/usr/lib/postgresql").glob("*/bin"), None)


def sh(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kw)


def say(message: str) -> None:
    print(f"[drill] {message}", flush=True)


class Drill:
    def __init__(self):
        self.tag = secrets.token_hex(2)
        self.bridge = f"sgd{self.tag}"
        self.work = Path(tempfile.mkdtemp(prefix="saga-drill-"))
        self.procs: list[subprocess.Popen] = []
        self.namespaces: list[str] = []
        self.passwords = {s: secrets.token_urlsafe(12) for s in SERVICES}

    def ns(self, host: str) -> str:
        return f"sgd{self.tag}-{host}"

    def ip(self, host: str) -> str:
        return f"{SUBNET}.{HOSTS[host]}"

    # --- the network ------------------------------------------------------------------

    def build_network(self) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{DRIVER}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for index, host in enumerate(HOSTS):
            ns, outside, inside = self.ns(host), f"sgd{self.tag}o{index}", f"sgd{self.tag}i{index}"
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            sh("ip", "link", "set", outside, "master", self.bridge)
            sh("ip", "link", "set", outside, "up")
            sh("ip", "link", "set", inside, "netns", ns)
            run = ("ip", "netns", "exec", ns, "ip")
            sh(*run, "link", "set", inside, "name", "eth0")
            sh(*run, "addr", "add", f"{self.ip(host)}/32", "dev", "eth0")
            sh(*run, "link", "set", "eth0", "up")
            sh(*run, "link", "set", "lo", "up")
            if host in INFRA:
                sh(*run, "route", "add", f"{SUBNET}.0/24", "dev", "eth0")
            else:  # a service host reaches Redis and the database server, nothing else
                for reachable in ("redis", "db"):
                    sh(*run, "route", "add", f"{self.ip(reachable)}/32", "dev", "eth0")

    # --- the servers -------------------------------------------------------------------

    def start(self, host: str, name: str, argv: list[str], env: dict[str, str], user=None):
        log = open(self.work / f"{name}.log", "wb")  # noqa: SIM115 (open while it runs)
        prefix = ["ip", "netns", "exec", self.ns(host)]
        if user:
            prefix += ["runuser", "-u", user, "--"]
        proc = subprocess.Popen(
            prefix + argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        proc.name = name  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def wait_log(self, name: str, marker: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        path = self.work / f"{name}.log"
        while time.monotonic() < deadline:
            if path.exists() and marker in path.read_text(errors="replace"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{name} did not start: {path.read_text(errors='replace')[-2000:]}")

    def start_redis(self) -> None:
        self.start(
            "redis",
            "redis",
            ["redis-server", "--bind", self.ip("redis"), "--port", "6379", "--save", "",
             "--appendonly", "no", "--protected-mode", "no"],
            os.environ.copy(),
        )  # fmt: skip
        self.wait_log("redis", "Ready to accept connections")

    def start_postgres(self) -> None:
        data = self.work / "pg"
        data.mkdir()
        shutil.chown(self.work, "postgres")
        shutil.chown(data, "postgres")
        sh("runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(data),
           "-A", "trust", "--no-sync")  # fmt: skip
        hba = ["local all all trust", f"host all all {DRIVER}/32 trust"]
        for service in SERVICES:
            hosts = [service] + (["api"] if service in API_SERVICES else [])
            hba += [f"host {service} {service} {self.ip(h)}/32 scram-sha-256" for h in hosts]
        (data / "pg_hba.conf").write_text("\n".join(hba) + "\n")
        self.start(
            "db",
            "postgres",
            [str(PG_BIN / "postgres"), "-D", str(data), "-c", f"listen_addresses={self.ip('db')}",
             "-c", "port=5432", "-k", str(data), "-c", "fsync=off"],
            os.environ.copy(),
            user="postgres",
        )  # fmt: skip
        self.wait_log("postgres", "ready to accept connections")
        for service in SERVICES:
            self.psql(f"CREATE ROLE {service} LOGIN PASSWORD '{self.passwords[service]}'")
            self.psql(f"CREATE DATABASE {service} OWNER {service}")

    def psql(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@{self.ip('db')}:5432/postgres",
                             autocommit=True) as conn:  # fmt: skip
            conn.execute(sql)

    def url(self, service: str) -> str:
        return (
            f"postgresql+psycopg://{service}:{self.passwords[service]}@{self.ip('db')}:5432/"
            f"{service}"
        )

    # --- the shop ------------------------------------------------------------------------

    def env(self, *services: str) -> dict[str, str]:
        """A host's environment: Redis, and the database URLs of `services` only."""
        env = {k: v for k, v in os.environ.items() if not k.endswith("_DATABASE_URL")}
        env.update(
            REDIS_URL=f"redis://{self.ip('redis')}:6379/0",
            AUTH_DIR=str(self.work / "auth"),
            PYTHONUNBUFFERED="1",
            LOG_LEVEL="INFO",
            SAGA_STALL_SECONDS="300",
        )
        env.update({f"{s.upper()}_DATABASE_URL": self.url(s) for s in services})
        return env

    def start_shop(self) -> None:
        migrate = {**self.env(), **{f"{s.upper()}_DATABASE_URL": self.url(s) for s in SERVICES}}
        sh(sys.executable, "-m", "app.schema", env=migrate, cwd=REPO)
        Keyring(self.work / "auth").init()
        python = sys.executable
        self.start("api", "web", [python, "-m", "gunicorn", "-c", "config/gunicorn.py",
                                  "--bind", f"{self.ip('api')}:8000", "app.wsgi:app"],
                   self.env(*API_SERVICES))  # fmt: skip
        self.start("api", "orchestrator", [python, "-m", "tasks.orchestrator"], self.env("orders"))
        self.start("api", "dlq", [python, "-m", "dlq", "worker"], self.env())
        self.start("api", "relay-orders", [python, "-m", "tasks.relay"],
                   {**self.env("orders"), "SERVICES": "orders"})  # fmt: skip
        self.start("dataplatform", "relay-dataplatform", [python, "-m", "tasks.relay"],
                   {**self.env("dataplatform"), "SERVICES": "dataplatform"})  # fmt: skip
        for service in SERVICES:
            self.start(
                service,
                f"worker-{service}",
                [python, "-m", "celery", "-A", "tasks.worker", "worker", "-Q", service,
                 "-c", "1", "-n", f"{service}@%h", "--without-mingle", "--without-gossip",
                 "--loglevel", "INFO"],
                self.env(service),
            )  # fmt: skip
        names = ["web", "orchestrator", "relay-orders", "relay-dataplatform"]
        for name in names + [f"worker-{s}" for s in SERVICES]:
            marker = {
                "web": "Booting worker",
                "orchestrator": "orchestrator started",
                "relay-orders": "outbox relay started",
                "relay-dataplatform": "outbox relay started",
            }.get(name, "ready.")
            self.wait_log(name, marker)

    # --- the story ---------------------------------------------------------------------

    def call(self, method: str, path: str, body=None, token: str | None = None):
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://{self.ip('api')}:8000{path}", data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def wait_order(self, order_id: int, token: str, statuses: tuple[str, ...]) -> dict:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            _, order = self.call("GET", f"/orders/{order_id}", token=token)
            if (
                order
                and order["status"] in statuses
                and not any(
                    s["status"] in ("running", "retrying", "pending")
                    for s in order["steps"]
                    if s["kind"] != "compensation" or order["status"] == "FAILED"
                )
            ):
                return order
            time.sleep(0.3)
        raise RuntimeError(f"order {order_id} never reached {statuses}: {order}")

    def story(self) -> None:
        keys = Keyring(self.work / "auth")
        admin = keys.mint(ADMIN, "drill", 3600)
        rich, poor = keys.mint(CUSTOMER, "1", 3600), keys.mint(CUSTOMER, "2", 3600)
        status, product = self.call(
            "POST", "/products", {"name": "drill mug", "price": 100, "stock": 5}, admin
        )
        assert status == 201, (status, product)
        self.call("POST", "/balances/1/charge", {"amount": 1_000}, admin)
        self.call("POST", "/balances/2/charge", {"amount": 50}, admin)
        line = {"items": [{"product_id": product["id"], "quantity": 2}]}
        _, placed = self.call("POST", "/orders", line, rich)
        done = self.wait_order(placed["order_id"], rich, ("COMPLETED",))
        say(f"order {done['order_id']} COMPLETED: " + ", ".join(
            f"{s['name']} on {s['worker']}" for s in done["steps"]))  # fmt: skip
        _, placed = self.call("POST", "/orders", line, poor)
        failed = self.wait_order(placed["order_id"], poor, ("FAILED",))
        undone = [s for s in failed["steps"] if s["kind"] == "compensation"]
        assert [s["status"] for s in undone] == ["succeeded"] * len(undone), undone
        undid = ", ".join(f"{s['name']} ({s['detail']}) on {s['worker']}" for s in undone)
        say(f"order {failed['order_id']} FAILED at {failed['failed_step']}, compensated: {undid}")
        _, stock = self.call("GET", f"/products/{product['id']}")
        assert stock["stock"] == 3, stock  # the refused order's 2 units came back
        for step in done["steps"]:
            service = next(s.queue for s in _order_steps() if s.name == step["name"])
            assert step["worker"].endswith(f":{service}"), step

    def isolation(self) -> None:
        """A service host reaches no other host, and no other service's database."""
        probe = (
            "import socket, sys\n"
            "s = socket.socket(); s.settimeout(2)\n"
            "try:\n    s.connect((sys.argv[1], int(sys.argv[2]))); print('reached')\n"
            "except OSError as e:\n    print('unreachable', e.errno)\n"
        )
        out = sh("ip", "netns", "exec", self.ns("products"), sys.executable, "-c", probe,
                 self.ip("orders"), "22", check=False).stdout  # fmt: skip
        assert "unreachable" in out, out
        out = sh("ip", "netns", "exec", self.ns("products"), sys.executable, "-c", probe,
                 self.ip("api"), "8000", check=False).stdout  # fmt: skip
        assert "unreachable" in out, out
        stolen = (
            "import psycopg, sys\n"
            "try:\n    psycopg.connect(sys.argv[1], connect_timeout=3); print('connected')\n"
            "except Exception as e:\n    print('refused', type(e).__name__)\n"
        )
        orders_url = self.url("orders").replace("+psycopg", "")
        out = sh("ip", "netns", "exec", self.ns("products"), sys.executable, "-c", stolen,
                 orders_url, check=False).stdout  # fmt: skip
        assert "refused" in out, out
        say("products host: no route to the orders or api host; orders' database refuses it")

    # --- teardown -------------------------------------------------------------------------

    def teardown(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for ns in self.namespaces:
            sh("ip", "netns", "pids", ns, check=False)
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                sh("kill", "-9", pid, check=False)
            sh("ip", "netns", "delete", ns, check=False)
        sh("ip", "link", "delete", self.bridge, check=False)
        if os.environ.get("DRILL_KEEP") != "1":
            shutil.rmtree(self.work, ignore_errors=True)


def _order_steps():
    from app.order_saga import ORDER

    return ORDER.steps


def main() -> int:
    if os.geteuid() != 0:
        print("error: the drill makes network namespaces: run it as root", file=sys.stderr)
        return 2
    if PG_BIN is None:
        print("error: PostgreSQL's server binaries are not installed", file=sys.stderr)
        return 2
    drill = Drill()
    started = time.monotonic()
    try:
        say(f"building {len(HOSTS)} hosts on bridge {drill.bridge} (work dir {drill.work})")
        drill.build_network()
        drill.start_redis()
        drill.start_postgres()
        drill.start_shop()
        say("every process is up, each on its own host")
        drill.story()
        drill.isolation()
        say(f"passed in {time.monotonic() - started:.1f} s")
        return 0
    except Exception as exc:
        say(f"FAILED: {type(exc).__name__}: {exc}")
        for log in sorted(drill.work.glob("*.log")):
            tail = log.read_text(errors="replace")[-1500:]
            print(f"--- {log.name}\n{tail}", file=sys.stderr)
        return 1
    finally:
        drill.teardown()


if __name__ == "__main__":
    sys.exit(main())
