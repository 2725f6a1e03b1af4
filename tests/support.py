"""Real components for the tests: a private Redis server, private databases, and Celery
workers as subprocesses (so soft time limits, crashes and redeliveries behave for real)."""

from __future__ import annotations

import contextlib
import json
import os
import re
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
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from app.auth import ADMIN, CUSTOMER, OPERATOR, Keyring
from app.workflows import SERVICES
from config.settings import REPO_ROOT

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
    # A writer killed between its commit and its send nudges nobody: the relay finds the
    # row on its idle poll, 30 s by default.
    "OUTBOX_IDLE_POLL_SECONDS": "1",
    # Several stacks of the suite share one PostgreSQL (100 connections, maybe used by other
    # programs too): each process keeps one connection per database, bursts borrow more.
    "DB_POOL_SIZE": "1",
    "DB_MAX_OVERFLOW": "15",
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


# Every deadline the tests wait on is sized for a loaded 2-core machine shared with other
# test runs; TEST_SLOW multiplies them all for a slower one. A deadline costs time only
# when what it waits for never happens, so a generous one is cheap.
SLOW = float(os.environ.get("TEST_SLOW", "1"))


def patient(seconds: float) -> float:
    return seconds * SLOW


# --- the processes the tests start ------------------------------------------------------

# Every process started through track(), until it is stopped: held here so that none is
# garbage-collected while still running (a ResourceWarning, an error under
# filterwarnings=error, in whichever test happens to collect it), and so that the end of
# the session can stop whatever a missed path left behind (stop_leftovers).
_tracked: dict[subprocess.Popen, bool] = {}  # the process -> it leads its own group


def track(proc: subprocess.Popen, group: bool = False) -> subprocess.Popen:
    _tracked[proc] = group
    return proc


def stop_process(proc: subprocess.Popen, timeout: float = 20, group: bool = False) -> None:
    """SIGTERM, then SIGKILL if it is not gone within `timeout`; always waited for (no
    zombie, no ResourceWarning). `group`: the process leads its own process group (it was
    started with start_new_session), and whatever of the group outlives it is killed too,
    so no child of a worker or of gunicorn is left behind. A process already gone is left
    alone: its pid, and so its group's id, may belong to another process by now."""
    try:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(patient(timeout))
            except subprocess.TimeoutExpired:
                # Said, since a process cut off mid-shutdown explains what follows (a
                # worker killed this way loses a message it had popped).
                sys.stderr.write(
                    f"pid {proc.pid} ({_argv_text(proc.args)}) was still running"
                    f" {patient(timeout):.0f} s after SIGTERM: SIGKILL\n"
                )
                _kill(proc, group)
                proc.wait(patient(30))
            if group:
                _kill_group(proc.pid)
    finally:
        if proc.returncode is not None:
            _tracked.pop(proc, None)


def _argv_text(args) -> str:
    words = [str(a) for a in args] if isinstance(args, (list, tuple)) else [str(args)]
    return " ".join(words)[:160]


def _kill(proc: subprocess.Popen, group: bool) -> None:
    if group:
        _kill_group(proc.pid)
    else:
        proc.kill()


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # nobody is left
        os.killpg(pgid, signal.SIGKILL)


def stop_leftovers() -> list[str]:
    """Stop every tracked process still running; what was stopped, for the report."""
    stopped = []
    for proc, group in list(_tracked.items()):
        if proc.poll() is None:
            args = proc.args if isinstance(proc.args, str) else " ".join(map(str, proc.args))
            stopped.append(f"{proc.pid}: {args}")
        stop_process(proc, timeout=10, group=group)
        _tracked.pop(proc, None)
    return stopped


def kill_session(sid: int) -> list[int]:
    """SIGKILL every process still in the session `sid` (all a `make run` started); the
    pids killed."""
    found = subprocess.run(["pgrep", "-s", str(sid)], capture_output=True, text=True)
    killed = []
    for pid in map(int, found.stdout.split()):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return killed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    timeout = patient(timeout)
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class RedisServer:
    # How long a redis-server may take to answer its first PING on a loaded machine.
    ready_seconds = 30.0

    def __init__(self, workdir: Path, persist: bool = False):
        self.port = free_port()
        self.workdir = workdir
        self.persist = persist
        self.proc: subprocess.Popen | None = None
        self._started_once = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis-server.log"

    def start(self) -> RedisServer:
        """Start it and wait until it answers; on any failure it is stopped before the
        error is raised. Between free_port() and its bind another program may take the
        port: a first start then tries another one (a restart keeps its port, the URL
        the stack's processes know)."""
        tries = 1 if self._started_once else 3
        while True:
            tries -= 1
            try:
                return self._start_once()
            except _PortTaken:
                if not tries:
                    raise
                self.port = free_port()

    def _start_once(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persist
            else ["--appendonly", "no"]
        )
        seen = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:  # the child holds its own copy
            self.proc = track(
                subprocess.Popen(
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
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        try:
            wait_for(
                lambda: self._answers() or self.proc.poll() is not None,
                self.ready_seconds,
                what=f"redis-server on port {self.port} to answer",
            )
            if self.proc.poll() is not None:
                with open(self.log_path, "rb") as log:
                    log.seek(seen)
                    said = log.read().decode(errors="replace")
                error = _PortTaken if "Address already in use" in said else RuntimeError
                raise error(
                    f"redis-server on port {self.port} exited with {self.proc.returncode}"
                    f" before it answered: {said[-2000:]}"
                )
        except BaseException:
            self.stop()
            raise
        self._started_once = True
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc, timeout=20)


class _PortTaken(RuntimeError):
    """Another program bound the port between free_port() and the server's own bind."""


# --- PostgreSQL -------------------------------------------------------------------------

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"

# The run's choice, made once (at the session's start, see conftest.py): ("url",) or
# (None,) for SQLite only. Asking again per stack let a momentarily busy server (another
# program holding most of its connections) turn PostgreSQL off half way through a run
# whose tests had been collected for it.
_postgres_choice: tuple[str | None] | None = None


def postgres_admin_url() -> str | None:
    """The PostgreSQL server this test run uses, or None: TEST_POSTGRES_URL, or the local
    server on 127.0.0.1:5432 if it answers. Decided at the first call and kept for the run."""
    global _postgres_choice
    if _postgres_choice is None:
        _postgres_choice = (_probe_postgres(),)
    return _postgres_choice[0]


def _probe_postgres() -> str | None:
    explicit = os.environ.get("TEST_POSTGRES_URL")
    url = explicit or LOCAL_POSTGRES
    if not explicit:
        # Nothing listening on 5432 is a machine without PostgreSQL: no need to wait.
        try:
            socket.create_connection(("127.0.0.1", 5432), timeout=patient(2)).close()
        except ConnectionRefusedError:
            return None
        except OSError:
            pass  # a full backlog or a slow answer: the server is there, ask it below
    try:
        # A few tries: a server that is busy right now (too many clients, starting up)
        # still answers within seconds.
        for attempt in Retrying(
            stop=stop_after_delay(patient(10)),
            wait=wait_exponential(multiplier=0.5, max=2),
            retry=retry_if_exception_type(psycopg.OperationalError),
            reraise=True,
        ):
            with attempt, psycopg.connect(_plain(url), connect_timeout=max(2, int(patient(3)))):
                pass
    except psycopg.Error:
        if explicit:
            raise
        return None
    return url


def _plain(url: str) -> str:
    """The URL as psycopg takes it (SQLAlchemy's names the driver)."""
    return url.replace("+psycopg", "")


def _shown(url: str) -> str:
    """The URL without its password, for an error message."""
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


class PostgresUnavailable(RuntimeError):
    """The server chosen at the start of the run no longer answers."""


class PostgresDatabases:
    """Five fresh databases on the server, dropped afterwards."""

    # How long creating or dropping waits for a server that is momentarily busy (every
    # connection taken, template1 in use by another CREATE DATABASE) before it gives up.
    deadline = 30.0

    def __init__(self, admin_url: str | None):
        if admin_url is None:
            raise PostgresUnavailable(
                "PostgreSQL was not chosen at the start of this test run (no server "
                "answered then): this run uses SQLite only"
            )
        self.admin_url = _plain(admin_url)
        self.prefix = f"saga_test_{uuid.uuid4().hex[:8]}"
        self._may_exist = False

    def urls(self) -> dict[str, str]:
        base = self.admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
        return {s: f"{base}/{self.prefix}_{s}" for s in SERVICES}

    def create(self) -> dict[str, str]:
        def create_each(conn) -> None:
            self._may_exist = True
            for service in SERVICES:
                # Made already by an earlier try whose connection broke after it?
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                    conn.execute(f'CREATE DATABASE "{self.prefix}_{service}"')

        self._on_the_server(create_each)
        return self.urls()

    def drop(self) -> None:
        if not self._may_exist:
            return  # create never reached the server: nothing to drop, no need to wait

        def drop_each(conn) -> None:
            for service in SERVICES:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.prefix}_{service}" WITH (FORCE)')

        self._on_the_server(drop_each)

    def _on_the_server(self, work) -> None:
        """Run `work` on a fresh admin connection, again while the server is momentarily
        busy, until the deadline; then one error that says what happened."""
        deadline = patient(self.deadline)
        try:
            for attempt in Retrying(
                stop=stop_after_delay(deadline),
                wait=wait_exponential(multiplier=0.2, max=2),
                retry=retry_if_exception_type(psycopg.OperationalError),
                reraise=True,
            ):
                with attempt:
                    timeout = max(2, int(min(patient(5), deadline)))
                    with psycopg.connect(
                        self.admin_url, autocommit=True, connect_timeout=timeout
                    ) as conn:
                        work(conn)
        except psycopg.OperationalError as exc:
            cause = f"{type(exc).__name__}: {str(exc).strip()}"
            raise PostgresUnavailable(
                f"PostgreSQL was chosen at the start of this test run ({_shown(self.admin_url)}) "
                f"and no longer answers (tried for {deadline:.0f} s): {cause}"
            ) from exc


def database_env(urls: dict[str, str]) -> dict[str, str]:
    return {f"{service.upper()}_DATABASE_URL": url for service, url in urls.items()}


def migrate(env: dict[str, str]) -> None:
    """Every service's migrations, in a real `python -m app.schema`; a failure says why
    (run() kills and waits for it on the timeout)."""
    done = subprocess.run(
        [sys.executable, "-m", "app.schema"],
        env={**os.environ, **env},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=patient(180),
    )
    if done.returncode != 0:
        raise RuntimeError(f"migrations failed ({done.returncode}): {done.stderr[-3000:]}")


class ServiceProcess:
    """A real process of ours, its output in a log file, killable as a whole group."""

    name = "process"
    ready_marker = b""
    cwd: Path = REPO_ROOT
    # How long it may take to say it is ready: a Python process importing the app (and a
    # prefork worker forking its pool) on a loaded 2-core machine.
    ready_seconds = 90.0

    def __init__(self, env: dict[str, str], logdir: Path):
        self.env = {**os.environ, **env}
        self.log_path = logdir / f"{self.name}-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen | None = None
        self._log = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self):
        """Start it and wait until it is ready; on any failure (it exits, it is not ready
        in time, the wait is interrupted) it is stopped before the error is raised."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        try:
            self.proc = track(
                subprocess.Popen(
                    self.argv(),
                    cwd=self.cwd,
                    env=self.env,
                    stdout=self._log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                ),
                group=True,
            )
            self._wait_ready()
        except BaseException:
            self.stop()
            if self.proc is not None:
                # It may have exited by itself a moment ago (the ready wait reaped it):
                # what it had forked still goes.
                _kill_group(self.proc.pid)
            raise
        return self

    def _wait_ready(self) -> None:
        try:
            wait_for(
                lambda: (
                    self.ready_marker in self.log_path.read_bytes() or self.proc.poll() is not None
                ),
                self.ready_seconds,
                what=f"{self.name} to be ready",
            )
        except AssertionError:
            raise RuntimeError(
                f"{self.name} was not ready after {patient(self.ready_seconds):.0f} s"
                f" (no {self.ready_marker!r} in its log): {self.log()[-3000:]}"
            ) from None
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.proc.returncode} before it was ready:"
                f" {self.log()[-3000:]}"
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM (a worker's warm shutdown), SIGKILL to its whole group if it is not gone
        in time; whatever of its group outlives it is killed too. Safe to call again."""
        if self.proc is not None:
            stop_process(self.proc, timeout=30, group=True)
        if self._log is not None:
            self._log.close()

    def kill(self, main_only: bool = False) -> None:
        """SIGKILL the whole process group (a worker and its children) at once, or only
        the main process (its children are then on their own)."""
        if self.proc and self.proc.poll() is None:
            if main_only:
                self.proc.kill()
            else:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(patient(30))
        if self._log is not None:
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
        try:
            wait_for(lambda: http("GET", self.url + "/healthz")[0] == 200, 60, what="the API")
        except AssertionError as exc:
            self.stop()
            raise RuntimeError(f"{exc}; gunicorn's log: {self.log()[-3000:]}") from None
        except BaseException:
            self.stop()
            raise
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


def on_later_build(process_class: type[ServiceProcess]) -> type[ServiceProcess]:
    """`process_class` (a process started as `python -m <module>`) run by a later build of
    the shop, the one TEST_LATER_BUILD in its env names (tests/later_build.py)."""

    class Later(process_class):  # type: ignore[valid-type,misc]
        def argv(self) -> list[str]:
            python, flag, *rest = super().argv()
            assert flag == "-m", f"{process_class.__name__} is not started with python -m"
            return [python, "-m", "tests.later_build", *rest]

    Later.__name__ = Later.__qualname__ = f"Later{process_class.__name__}"
    return Later


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
        timeout=patient(60),
    )
