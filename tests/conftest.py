"""Session fixtures: one private Redis, private databases (PostgreSQL when a server
answers, SQLite files otherwise), one real worker, and the Flask app on the same stack."""

from __future__ import annotations

import itertools
import os

import pytest

from config.settings import Settings
from tests.shop import Shop
from tests.support import (
    FAST_TIMINGS,
    PostgresDatabases,
    RedisServer,
    WorkerProcess,
    database_env,
    migrate,
    postgres_admin_url,
)

_user_ids = itertools.count(1000)


def backends() -> list[str]:
    return ["sqlite", "postgresql"] if postgres_admin_url() else ["sqlite"]


def provision_databases(backend: str, tmp_path_factory) -> tuple[dict[str, str], callable]:
    if backend == "postgresql":
        pg = PostgresDatabases(postgres_admin_url())
        return pg.create(), pg.drop
    folder = tmp_path_factory.mktemp("sqlite")
    return {
        s: f"sqlite:///{folder / f'{s}.db'}"
        for s in ("orders", "products", "balances", "coupons", "dataplatform")
    }, lambda: None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def primary_backend() -> str:
    return backends()[-1]


@pytest.fixture(scope="session")
def stack_env(redis_server, primary_backend, tmp_path_factory):
    urls, drop = provision_databases(primary_backend, tmp_path_factory)
    env = {
        "REDIS_URL": redis_server.url,
        **database_env(urls),
        **FAST_TIMINGS,
        "SAGA_FAULTS": "",
        "SAGA_FAULTS_ENABLED": "0",
        "SLACK_WEBHOOK_URL": "",
        "SLACK_BOT_TOKEN": "",
    }
    migrate(env)
    yield env
    drop()


@pytest.fixture(scope="session")
def settings(stack_env) -> Settings:
    return Settings.from_env({**os.environ, **stack_env})


@pytest.fixture(scope="session")
def worker(stack_env, tmp_path_factory):
    proc = WorkerProcess(stack_env, tmp_path_factory.mktemp("logs")).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def flask_app(settings):
    from app import create_app

    app = create_app(settings)
    yield app
    app.extensions["saga"].rt.dispose()


@pytest.fixture
def client(flask_app):
    return flask_app.test_client()


@pytest.fixture(scope="session")
def rt(flask_app):
    return flask_app.extensions["saga"].rt


@pytest.fixture
def shop(client, rt) -> Shop:
    return Shop(client, rt, _user_ids)
