"""Real components for the tests: a private Redis server, private databases, and Celery
workers as subprocesses (so soft time limits, crashes and redeliveries behave for real)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psycopg

from app.auth import ADMIN, CUSTOMER, OPERATOR, Keyring
from config.settings import REPO_ROOT, SERVICES

# Short limits and delays so failure tests finish in seconds; the relations the settings
# validate (visibility timeout above the longest retry delay plus the hard limit) still hold.
FAST_TIMINGS = {
    "STEP_SOFT_TIME_LIMIT": "1",
    # A child that dies is noticed within ~5 s (the pool's periodic check): the hard limit
    # must be longer, or it fails the task before the redelivery happens.
    "STEP_TIME_LIMIT": "12",
    "STEP_MAX_RETRIES": "2",
    "STEP_RETRY_BACKOFF": "1",
    "STEP_RETRY_BACKOFF_MAX": "1",
    "BROKER_VISIBILITY_TIMEOUT": "15",
    "BROKER_RESTORE_INTERVAL": "1",
    "DLQ_MAX_ATTEMPTS": "2",
    "DLQ_BACKOFF": "0.2",
    "DLQ_BACKOFF_MAX": "0.5",
    "DLQ_POLL_INTERVAL": "0.1",
    "DLQ_LEASE_SECONDS": "5",
    "DLQ_ALERT_RETRY_SECONDS": "0.3",
    "SAGA_STALL_SECONDS": "30",
    "SAGA_STALL_CHECK_SECONDS": "1",
    "SLACK_TIMEOUT": "2",
    "LOG_LEVEL": "INFO",
}


class Credentials:
    """Tokens for the tests' own key directory, minted once per (role, subject)."""

    def __init__(self, auth_dir: Path):
        self.dir = auth_dir
        self.keyring = Keyring(auth_dir)
        self.keyring.init()
        self._tokens: dict[tuple[str, str], str] = {}

    def token(self, role: str, subject: str) -> str:
        key = (role, str(subject))
        if key not in self._tokens:
            self._tokens[key] = self.keyring.mint(role, str(subject), 3600)
        return self._tokens[key]

    def header(self, role: str, subject: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role, subject)}"}

    def customer(self, user_id: int) -> dict[str, str]:
        return self.header(CUSTOMER, str(user_id))

    @property
    def admin(self) -> dict[str, str]:
        return self.header(ADMIN, "test-admin")

    @property
    def operator(self) -> dict[str, str]:
        return self.header(OPERATOR, "test-operator")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class RedisServer:
    def __init__(self, workdir: Path, persist: bool = False):
        self.port = free_port()
        self.workdir = workdir
        self.persist = persist
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persist
            else ["--appendonly", "no"]
        )
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(self.workdir),
                *persistence,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._answers, 10, what="redis-server to answer")
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def postgres_admin_url() -> str | None:
    """TEST_POSTGRES_URL, or the local server on 127.0.0.1:5432 if it answers."""
    url = os.environ.get("TEST_POSTGRES_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
    try:
        with psycopg.connect(url.replace("+psycopg", ""), connect_timeout=2):
            return url
    except Exception:
        if os.environ.get("TEST_POSTGRES_URL"):
            raise
        return None


class PostgresDatabases:
    """Five fresh databases on the server, dropped afterwards."""

    def __init__(self, admin_url: str):
        self.admin_url = admin_url.replace("+psycopg", "")
        self.prefix = f"saga_test_{uuid.uuid4().hex[:8]}"

    def urls(self) -> dict[str, str]:
        base = self.admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
        return {s: f"{base}/{self.prefix}_{s}" for s in SERVICES}

    def create(self) -> dict[str, str]:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for service in SERVICES:
                conn.execute(f'CREATE DATABASE "{self.prefix}_{service}"')
        return self.urls()

    def drop(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for service in SERVICES:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.prefix}_{service}" WITH (FORCE)')


def database_env(urls: dict[str, str]) -> dict[str, str]:
    return {f"{service.upper()}_DATABASE_URL": url for service, url in urls.items()}


def migrate(env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "app.schema"],
        env={**os.environ, **env},
        check=True,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
    )


class ServiceProcess:
    """A real process of ours, its output in a log file, killable as a whole group."""

    name = "process"
    ready_marker = b""

    def __init__(self, env: dict[str, str], logdir: Path):
        self.env = {**os.environ, **env}
        self.log_path = logdir / f"{self.name}-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv(),
            cwd=REPO_ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(
            lambda: self.ready_marker in self.log_path.read_bytes() or self.proc.poll() is not None,
            30,
            what=f"{self.name} to be ready",
        )
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited: {self.log()[-3000:]}")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def kill(self, main_only: bool = False) -> None:
        """SIGKILL the whole process group (a worker and its children) at once, or only
        the main process (its children are then on their own)."""
        if self.proc and self.proc.poll() is None:
            if main_only:
                self.proc.kill()
            else:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()

    def group_members(self) -> list[int]:
        """The pids still in the process's group (its children, once it is gone)."""
        found = subprocess.run(
            ["pgrep", "-g", str(self.proc.pid)], capture_output=True, text=True, check=False
        )
        return [int(pid) for pid in found.stdout.split()]


class WorkerProcess(ServiceProcess):
    """A real `celery worker` (prefork) consuming every service queue, or only `queues`."""

    name, ready_marker = "worker", b"ready."

    def __init__(self, env: dict[str, str], logdir: Path, queues=SERVICES, concurrency: int = 2):
        super().__init__(env, logdir)
        self.queues, self.concurrency = tuple(queues), concurrency

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tasks.worker",
            "worker",
            "-Q",
            ",".join(self.queues),
            "-c",
            str(self.concurrency),
            "-P",
            "prefork",
            "-n",
            f"test-{uuid.uuid4().hex[:6]}@%h",
            "--without-mingle",
            "--without-gossip",
            "--loglevel",
            "INFO",
        ]


class ApiProcess(ServiceProcess):
    """The real API under gunicorn, with the settings the Procfile uses (config/gunicorn.py),
    on a free port."""

    name, ready_marker = "gunicorn", b"Booting worker"

    def __init__(self, env: dict[str, str], logdir: Path, **settings: str):
        self.port = free_port()
        super().__init__({**env, "PORT": str(self.port), **settings}, logdir)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.py", "app.wsgi:app"]

    def start(self):
        super().start()
        wait_for(lambda: http("GET", self.url + "/healthz")[0] == 200, 30, what="the API")
        return self


def http(method: str, url: str, body=None, headers=None, timeout: float = 30):
    """One request: (status, parsed JSON body or None); (0, None) if nothing answered."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        raw, status = err.read(), err.code
    except OSError:
        return 0, None
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, None


class OrchestratorProcess(ServiceProcess):
    """The real `python -m tasks.orchestrator`: it keeps the saga log."""

    name, ready_marker = "orchestrator", b"orchestrator started"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "tasks.orchestrator"]


class RelayProcess(ServiceProcess):
    """The real `python -m tasks.relay`: it sends what the outboxes hold."""

    name, ready_marker = "relay", b"outbox relay started"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "tasks.relay"]


class DeadLetterWorkerProcess(ServiceProcess):
    """The real `python -m dlq worker` process."""

    name, ready_marker = "dlq", b"DLQ worker started"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "dlq", "worker"]


def run_cli(env: dict[str, str], *args: str, stdin: str | None = None):
    """Run `python -m dlq ...` for real and return the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "dlq", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
    )
