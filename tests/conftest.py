"""Session fixtures: one private stack — its own Redis, its own databases (PostgreSQL when
a server answers, SQLite files otherwise), the Flask app — and one real worker on it."""

from __future__ import annotations

import itertools

import pytest

from tests.shop import Shop
from tests.stack import Stack, available_backends

_user_ids = itertools.count(1000)


@pytest.fixture(scope="session")
def primary_backend() -> str:
    return available_backends()[-1]


@pytest.fixture(scope="session")
def primary_stack(primary_backend, tmp_path_factory):
    stack = Stack(primary_backend, tmp_path_factory.mktemp("primary")).start()
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def stack_env(primary_stack) -> dict[str, str]:
    return primary_stack.env


@pytest.fixture(scope="session")
def worker(primary_stack):
    proc = primary_stack.worker()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def flask_app(primary_stack):
    return primary_stack.app


@pytest.fixture
def client(flask_app):
    return flask_app.test_client()


@pytest.fixture(scope="session")
def credentials(primary_stack):
    return primary_stack.credentials


@pytest.fixture(scope="session")
def rt(primary_stack):
    return primary_stack.rt


@pytest.fixture
def shop(client, rt, primary_stack) -> Shop:
    return Shop(client, rt, _user_ids, primary_stack.credentials)
