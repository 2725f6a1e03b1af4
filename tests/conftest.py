"""Session fixtures: one private stack — its own Redis, its own databases (PostgreSQL when
a server answers, SQLite files otherwise), the Flask app — and one real worker on it."""

from __future__ import annotations

import itertools

import pytest
import redis as redis_lib

from sagaflow.testing import memory_redis
from tests.shop import Shop
from tests.stack import Stack, available_backends, primary_backend_name
from tests.support import SLOW, RedisServer, postgres_admin_url, stop_leftovers

_user_ids = itertools.count(1000)


def pytest_sessionstart(session) -> None:
    """The backends are chosen here, once, before collection parametrizes tests by them;
    every stack of the run then uses that choice (tests/support.postgres_admin_url)."""
    postgres_admin_url()


def pytest_collection_modifyitems(config, items) -> None:
    """The failure matrix runs whole on the primary backend only: a module that says which
    of its cases a run leaves out (`off_its_backend`) has them deselected."""
    kept, left_out = [], []
    for item in items:
        off = getattr(item.module, "off_its_backend", None)
        (left_out if off and off(item) else kept).append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept


def pytest_report_header(config) -> list[str]:
    url = postgres_admin_url()
    where = f" (PostgreSQL at {url.rsplit('@', 1)[-1]})" if url else ""
    return [f"saga test backends: {', '.join(available_backends())}{where}; TEST_SLOW={SLOW:g}"]


def pytest_sessionfinish(session) -> None:
    """A process some path forgot to stop is stopped (and waited for) here at the latest,
    and named, so the next run on this machine does not find it still running."""
    left = stop_leftovers()
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("stopped processes the tests left running:", yellow=True)
            for each in left:
                reporter.write_line(f"  {each}", yellow=True)


@pytest.fixture(scope="session")
def primary_backend() -> str:
    """PostgreSQL when a server answers, else SQLite; TEST_PRIMARY_BACKEND=sqlite runs the
    single-backend modules (crash, bad input...) on SQLite even then."""
    try:
        return primary_backend_name()
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.fixture(scope="session")
def primary_stack(primary_backend, tmp_path_factory):
    stack = Stack(primary_backend, tmp_path_factory.mktemp("primary")).start()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def stacks_by_mode(primary_backend, primary_stack, tmp_path_factory):
    """mode -> a stack running the saga that way (SAGA_MODE): the primary stack for its own
    mode, another started on first use, for the modules that run in both modes. The other
    is stopped with its module: its processes and database connections do not linger."""
    made = {primary_stack.settings.saga_mode: primary_stack}

    def in_mode(mode: str) -> Stack:
        if mode not in made:
            workdir = tmp_path_factory.mktemp(f"stack-{mode}")
            made[mode] = Stack(primary_backend, workdir, SAGA_MODE=mode).start()
        return made[mode]

    yield in_mode
    for stack in made.values():
        if stack is not primary_stack:
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


# --- the rules layer: Redis in memory, and the same rules on a real server -------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("rules-redis")).start()
    yield server
    server.stop()


@pytest.fixture(params=["inmemory", "redisserver"])
def redis(request):
    """Every rule runs on the in-memory Redis a team's own tests would use (`make
    test-fast`, no process), and on a real redis-server: the fake must not hide anything."""
    if request.param == "inmemory":
        client = memory_redis()
    else:
        client = redis_lib.Redis.from_url(request.getfixturevalue("redis_server").url)
    yield client
    client.close()
