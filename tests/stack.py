"""A whole private stack (Redis, five databases, the Flask app) for tests that need their
own workers with their own settings, such as fault injection."""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path

from app.workflows import SERVICES
from config.settings import Settings
from tests.inspect_view import Inspector
from tests.shop import Shop
from tests.support import (
    FAST_TIMINGS,
    ApiProcess,
    Credentials,
    DeadLetterWorkerProcess,
    OrchestratorProcess,
    PostgresDatabases,
    RedisServer,
    RelayProcess,
    ServiceProcess,
    WorkerProcess,
    database_env,
    migrate,
    on_later_build,
    postgres_admin_url,
    run_cli,
)


class Stack:
    def __init__(self, backend: str, workdir: Path, redis_persist: bool = False, **env):
        self.backend, self.workdir = backend, workdir
        self.redis = RedisServer(workdir / "redis", persist=redis_persist)
        self.extra_env = env
        self._pg: PostgresDatabases | None = None
        self._user_ids = itertools.count(5_000)
        self._processes: list[ServiceProcess] = []  # every process started on this stack
        self._undo: contextlib.ExitStack | None = None

    def start(self) -> Stack:
        """Start every part; each one's stop is registered as soon as it is up, before the
        next starts, so a step that fails (a process not coming up, a migration error,
        PostgreSQL gone) stops what was already started before the error is raised.
        stop() runs the same stops, last started first."""
        with contextlib.ExitStack() as undo:
            self._start(undo)
            self._undo = undo.pop_all()
        return self

    def _start(self, undo: contextlib.ExitStack) -> None:
        from app import create_app

        self.redis.start()
        undo.callback(self.redis.stop)
        if self.backend == "postgresql":
            self._pg = PostgresDatabases(postgres_admin_url())
            undo.callback(self._pg.drop)  # before create: a half-done create is dropped too
            urls = self._pg.create()
        else:
            urls = {s: f"sqlite:///{self.workdir / f'{s}.db'}" for s in SERVICES}
        self.credentials = Credentials(self.workdir / "auth")
        self.env = {
            "AUTH_DIR": str(self.credentials.dir),
            "REDIS_URL": self.redis.url,
            **database_env(urls),
            **FAST_TIMINGS,
            "SAGA_FAULTS": "",
            "SAGA_FAULTS_ENABLED": "0",
            "SLACK_WEBHOOK_URL": "",
            "SLACK_BOT_TOKEN": "",
            **self.extra_env,
        }
        migrate(self.env)
        self.settings = Settings.from_env({**os.environ, **self.env})
        self.app = create_app(self.settings)
        undo.callback(self.app.extensions["services"].dispose)
        self.rt = Inspector(self.settings)
        undo.callback(self.rt.dispose)
        self.runner = self.app.extensions["runner"]
        self.shop = Shop(self.app.test_client(), self.rt, self._user_ids, self.credentials)
        # Every process started on the stack from here on (the orchestrator, relays, and
        # the workers, APIs and DLQ workers tests start) is stopped with it if it still
        # runs: a test that fails between two starts leaves nothing behind its module.
        undo.callback(self._stop_processes)
        # The saga log is kept by the orchestrator, the outboxes sent by the relay: every
        # stack runs one of each.
        self.orchestrator = self.start_orchestrator()
        self.relay = self.start_relay()

    def _started(self, proc: ServiceProcess) -> ServiceProcess:
        """Start a process of this stack (one that fails to start stops itself)."""
        self._processes.append(proc)
        return proc.start()

    def _stop_processes(self) -> None:
        while self._processes:
            self._processes.pop().stop()  # stop() is a no-op for one already stopped

    def start_relay(self, **env) -> RelayProcess:
        return self._started(RelayProcess({**self.env, **env}, self.workdir / "logs"))

    def start_orchestrator(self, **env) -> OrchestratorProcess:
        return self._started(OrchestratorProcess({**self.env, **env}, self.workdir / "logs"))

    def restart_orchestrator(self, **env) -> None:
        self.orchestrator.stop()
        self.orchestrator = self.start_orchestrator(**env)

    def worker(
        self, faults: str = "", queues=SERVICES, concurrency: int = 2, **env
    ) -> WorkerProcess:
        fault_env = {"SAGA_FAULTS": faults, "SAGA_FAULTS_ENABLED": "1"} if faults else {}
        return self._started(
            WorkerProcess(
                {**self.env, **fault_env, **env}, self.workdir / "logs", queues, concurrency
            )
        )

    def api(self, **env) -> ApiProcess:
        return self._started(ApiProcess({**self.env, **env}, self.workdir / "logs"))

    def dlq_worker(self, faults: str = "", **env):
        fault_env = {"SAGA_FAULTS": faults, "SAGA_FAULTS_ENABLED": "1"} if faults else {}
        return self._started(
            DeadLetterWorkerProcess({**self.env, **fault_env, **env}, self.workdir / "logs")
        )

    def on_later_build(self, process_class, build: str, *args, **env) -> ServiceProcess:
        """A process of this stack run by a later build of the shop (tests/later_build.py:
        `build` is its TEST_LATER_BUILD), with the stack's settings and `env`."""
        later = on_later_build(process_class)
        return self._started(
            later({**self.env, "TEST_LATER_BUILD": build, **env}, self.workdir / "logs", *args)
        )

    def cli(self, *args: str, stdin: str | None = None, **env):
        return run_cli({**self.env, **env}, *args, stdin=stdin)

    def stop(self) -> None:
        """Stop every process started on it, release its connections, drop its PostgreSQL
        databases, stop its Redis. Safe to call again."""
        undo, self._undo = self._undo, None
        if undo is not None:
            undo.close()


def available_backends() -> list[str]:
    return ["sqlite", "postgresql"] if postgres_admin_url() else ["sqlite"]


def primary_backend_name() -> str:
    """PostgreSQL when a server answers, else SQLite; TEST_PRIMARY_BACKEND=sqlite chooses
    SQLite even then (the single-backend modules, and the failure matrix's whole run)."""
    chosen = os.environ.get("TEST_PRIMARY_BACKEND")
    if chosen and chosen not in available_backends():
        raise ValueError(f"TEST_PRIMARY_BACKEND={chosen}: have {available_backends()}")
    return chosen or available_backends()[-1]
