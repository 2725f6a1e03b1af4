"""A whole private stack (Redis, five databases, the Flask app) for tests that need their
own workers with their own settings, such as fault injection."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from config.settings import SERVICES, Settings
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
    WorkerProcess,
    database_env,
    migrate,
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

    def start(self) -> Stack:
        from app import create_app

        self.redis.start()
        if self.backend == "postgresql":
            self._pg = PostgresDatabases(postgres_admin_url())
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
        self.rt = Inspector(self.settings)
        self.runner = self.app.extensions["runner"]
        self.shop = Shop(self.app.test_client(), self.rt, self._user_ids, self.credentials)
        # The saga log is kept by the orchestrator, the outboxes sent by the relay: every
        # stack runs one of each.
        self.orchestrator = self.start_orchestrator()
        self.relay = self.start_relay()
        return self

    def start_relay(self, **env) -> RelayProcess:
        return RelayProcess({**self.env, **env}, self.workdir / "logs").start()

    def start_orchestrator(self, **env) -> OrchestratorProcess:
        return OrchestratorProcess({**self.env, **env}, self.workdir / "logs").start()

    def restart_orchestrator(self, **env) -> None:
        self.orchestrator.stop()
        self.orchestrator = self.start_orchestrator(**env)

    def worker(
        self, faults: str = "", queues=SERVICES, concurrency: int = 2, **env
    ) -> WorkerProcess:
        fault_env = {"SAGA_FAULTS": faults, "SAGA_FAULTS_ENABLED": "1"} if faults else {}
        return WorkerProcess(
            {**self.env, **fault_env, **env}, self.workdir / "logs", queues, concurrency
        ).start()

    def api(self, **env) -> ApiProcess:
        return ApiProcess({**self.env, **env}, self.workdir / "logs").start()

    def dlq_worker(self, faults: str = "", **env):
        fault_env = {"SAGA_FAULTS": faults, "SAGA_FAULTS_ENABLED": "1"} if faults else {}
        return DeadLetterWorkerProcess(
            {**self.env, **fault_env, **env}, self.workdir / "logs"
        ).start()

    def cli(self, *args: str, stdin: str | None = None, **env):
        return run_cli({**self.env, **env}, *args, stdin=stdin)

    def stop(self) -> None:
        self.relay.stop()
        self.orchestrator.stop()
        self.app.extensions["services"].dispose()
        self.rt.dispose()
        self.redis.stop()
        if self._pg:
            self._pg.drop()


def available_backends() -> list[str]:
    return ["sqlite", "postgresql"] if postgres_admin_url() else ["sqlite"]
