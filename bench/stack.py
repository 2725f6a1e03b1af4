"""The benchmark's own stack: a private Redis, fresh databases, Celery workers and gunicorn,
each started the way `make run` starts it (Procfile), each stopped by its own process id."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from app.workflows import SERVICES
from config.settings import REPO_ROOT

# The Procfile's `worker` line, less the node name (ours is unique) and the log level flag.
WORKER_QUEUES = ",".join(SERVICES)
WORKER_CONCURRENCY = 2
WORKER_POOL = "prefork"
# The Procfile's `web` line: config/gunicorn.py at its defaults (WEB_WORKERS, WEB_THREADS).
WEB_WORKERS, WEB_THREADS = 2, 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


class Process:
    """A subprocess in its own session, logging to a file, stopped by its pid."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logdir: Path):
        self.name, self.argv, self.env = name, argv, env
        self.log_path = logdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> Process:
        # Kept open for as long as the process writes to it; closed in stop().
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.argv,
            cwd=REPO_ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_ready(self, ready, timeout: float) -> None:
        try:
            wait_for(lambda: ready() or not self.alive(), timeout, self.name)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; last log lines:\n{self.log_text()[-3000:]}") from None
        self.check_alive()

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited; last log lines:\n{self.log_text()[-3000:]}")

    def stop(self, grace: float = 20.0) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                # Our process group only (the session we created for it).
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self._log:
            self._log.close()
            self._log = None


class RedisServer(Process):
    def __init__(self, workdir: Path, logdir: Path):
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ]
        super().__init__("redis", argv, dict(os.environ), logdir)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> RedisServer:
        super().start()
        self.wait_ready(self._answers, 10)
        return self


class CeleryWorker(Process):
    """`celery -A <app> worker -Q ... -P prefork -c 2 --loglevel INFO -n <name>@%h`."""

    def __init__(self, name: str, app: str, env: dict[str, str], logdir: Path):
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "-Q",
            WORKER_QUEUES,
            "-P",
            WORKER_POOL,
            "-c",
            str(WORKER_CONCURRENCY),
            "--loglevel",
            "INFO",
            "-n",
            f"{name}-{uuid.uuid4().hex[:6]}@%h",
        ]
        super().__init__(name, argv, env, logdir)

    def start(self) -> CeleryWorker:
        super().start()
        self.wait_ready(lambda: " ready." in self.log_text(), 60)
        return self


class Orchestrator(Process):
    """`python -m tasks.orchestrator`: it keeps the saga log from the workers' events."""

    def __init__(self, env: dict[str, str], logdir: Path):
        super().__init__("orchestrator", [sys.executable, "-m", "tasks.orchestrator"], env, logdir)

    def start(self) -> Orchestrator:
        super().start()
        self.wait_ready(lambda: "orchestrator started" in self.log_text(), 60)
        return self


class Relay(Process):
    """`python -m tasks.relay`: it sends what the fast path left in the outboxes."""

    def __init__(self, env: dict[str, str], logdir: Path):
        super().__init__("relay", [sys.executable, "-m", "tasks.relay"], env, logdir)

    def start(self) -> Relay:
        super().start()
        self.wait_ready(lambda: "outbox relay started" in self.log_text(), 60)
        return self

    def cpu_seconds(self) -> float:
        """User plus system CPU time the relay has used so far (/proc/<pid>/stat)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class SpanSink(Process):
    """bench/otlp_sink.py on a free port: where a traced saga's processes send their spans."""

    def __init__(self, env: dict[str, str], logdir: Path):
        self.port = free_port()
        super().__init__(
            "span-sink", [sys.executable, "-m", "bench.otlp_sink", str(self.port)], env, logdir
        )

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _answers(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def start(self) -> SpanSink:
        super().start()
        self.wait_ready(self._answers, 30)
        return self


class Gunicorn(Process):
    """The Procfile's web line (config/gunicorn.py, its defaults) on a free port."""

    def __init__(self, name: str, target: str, env: dict[str, str], logdir: Path):
        self.port = free_port()
        argv = [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.py", target]
        super().__init__(
            name, argv, {**env, "PORT": str(self.port), "RATE_LIMITS_ENABLED": "0"}, logdir
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _answers(self, path: str) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
                return conn.recv(32).split(b"\r\n")[0].endswith(b" 200 OK")
        except OSError:
            return False

    def start(self, health_path: str = "/healthz") -> Gunicorn:
        super().start()
        self.wait_ready(lambda: self._answers(health_path), 60)
        return self


# --- databases -----------------------------------------------------------------------


class SqliteDatabases:
    """One SQLite file per service (what `make run` uses), in a temporary folder."""

    def __init__(self, folder: Path):
        self.folder = folder

    def create(self, names=SERVICES) -> dict[str, str]:
        self.folder.mkdir(parents=True, exist_ok=True)
        return {name: f"sqlite:///{self.folder / f'{name}.db'}" for name in names}

    def drop(self) -> None:
        pass  # the temporary folder goes with everything in it


class PostgresDatabases:
    """Fresh `bench_<random>_<name>` databases on 127.0.0.1:5432, dropped at the end."""

    ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

    def __init__(self, admin_url: str = ADMIN_URL):
        self.admin_url = admin_url
        self.prefix = f"bench_{uuid.uuid4().hex[:8]}"
        self.created: list[str] = []

    def create(self, names=SERVICES) -> dict[str, str]:
        import psycopg

        base = self.admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            for name in names:
                conn.execute(f'CREATE DATABASE "{self.prefix}_{name}"')
                self.created.append(f"{self.prefix}_{name}")
        return {name: f"{base}/{self.prefix}_{name}" for name in names}

    def drop(self) -> None:
        import psycopg

        if not self.created:
            return
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            for db in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        self.created = []


def database_env(urls: dict[str, str]) -> dict[str, str]:
    return {f"{service.upper()}_DATABASE_URL": urls[service] for service in SERVICES}


def migrate(env: dict[str, str]) -> None:
    """`python -m app.schema`, as `make run` does."""
    subprocess.run(
        [sys.executable, "-m", "app.schema"],
        env=env,
        cwd=REPO_ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=120,
    )
