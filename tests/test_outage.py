"""An outage is said once when it starts and once when it ends, never as a traceback per
attempt: the reporter in-process, with its clock injected (no sleeps), then the real
orchestrator and DLQ worker processes through a real Redis restart."""

from __future__ import annotations

import logging
import time

import pytest
import redis.exceptions
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import OperationalError

from app.workflows import SERVICES
from sagaflow._outage import OutageReporter, cause
from tests.support import (
    FAST_TIMINGS,
    DeadLetterWorkerProcess,
    OrchestratorProcess,
    RedisServer,
    database_env,
    migrate,
    wait_for,
)

REFUSED = "Error 111 connecting to 127.0.0.1:6390. Connection refused."


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def said(caplog):
    caplog.set_level(logging.DEBUG, logger="test.outage")
    return lambda level=logging.INFO: [r for r in caplog.records if r.levelno >= level]


def _reporter(clock, **kw):
    return OutageReporter(logging.getLogger("test.outage"), clock=clock, **kw)


def test_an_outage_is_one_line_when_it_starts_and_one_when_it_ends(said):
    clock = Clock()
    outage = _reporter(clock)
    outage.ok()  # all is well: nothing to say
    for _ in range(29):  # a 10 s Redis restart, seen by a loop that retries
        assert outage.failed(redis.exceptions.ConnectionError(REFUSED)) is True
        assert outage.down
        clock.now += 0.35
    clock.now += 0.05
    outage.ok()
    outage.ok()
    lines = said()
    assert [r.getMessage() for r in lines] == [
        f"Redis unreachable: ConnectionError: {REFUSED}",
        "Redis reachable again after 10.2 s (29 failed attempts)",
    ]
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in lines)
    assert not outage.down


def test_a_second_outage_is_reported_again_and_counted_on_its_own(said):
    clock = Clock()
    outage = _reporter(clock, what="the broker")
    for _ in range(2):
        for _ in range(3):
            outage.failed(BrokerError(REFUSED))
            clock.now += 1
        outage.ok()
    assert [r.getMessage() for r in said()] == [
        f"the broker unreachable: OperationalError: {REFUSED}",
        "the broker reachable again after 3.0 s (3 failed attempts)",
    ] * 2


def test_a_bug_logs_its_traceback_at_most_once_per_interval(said):
    clock = Clock()
    outage = _reporter(clock, trace_every=60)
    for _ in range(120):  # two minutes of a loop that fails every second on a bug
        try:
            {}["missing"]
        except KeyError as exc:
            assert outage.failed(exc) is False
        clock.now += 1
    errors = said(logging.ERROR)
    assert [r.getMessage() for r in errors] == [
        "unexpected error, retrying: KeyError: 'missing'",
        "unexpected error, retrying: KeyError: 'missing' (59 more since the last one)",
    ]
    assert all(r.exc_info and r.exc_info[0] is KeyError for r in errors)
    assert not outage.down  # a bug is not an outage
    outage.ok()
    assert len(said()) == 2


def test_the_cause_is_one_line_without_credentials():
    url_error = redis.exceptions.ConnectionError(
        "cannot connect to redis://ops:hunter2@10.0.0.5:6379/0\nsecond line"
    )
    assert cause(url_error) == "ConnectionError: cannot connect to redis://ops:***@10.0.0.5:6379/0"
    database = OperationalError(
        "SELECT 1", {}, Exception("connection to server at 10.0.0.7 failed\nDETAIL: more")
    )
    assert cause(database) == "Exception: connection to server at 10.0.0.7 failed"
    assert cause(TimeoutError()) == "TimeoutError"


def test_what_is_unreachable_is_named_from_the_error(said):
    clock = Clock()
    outage = _reporter(clock)
    assert outage.failed(redis.exceptions.TimeoutError("Timeout reading from socket"))
    outage.ok()
    assert said()[0].getMessage().startswith("Redis unreachable: TimeoutError: Timeout")


# --- the real processes through a real Redis restart ------------------------------------


def test_processes_say_a_redis_outage_once_and_that_it_is_over(tmp_path):
    # Persisting, as the Redis `make run` starts does: this is about the outage, not about
    # a Redis that comes back empty.
    redis_server = RedisServer(tmp_path / "redis", persist=True).start()
    started = []
    try:
        env = {
            "REDIS_URL": redis_server.url,
            **database_env({s: f"sqlite:///{tmp_path / f'{s}.db'}" for s in SERVICES}),
            **FAST_TIMINGS,
            "SLACK_WEBHOOK_URL": "",
            "SLACK_BOT_TOKEN": "",
        }
        migrate(env)
        for process in (OrchestratorProcess, DeadLetterWorkerProcess):
            started.append(process(env, tmp_path / "logs").start())
        orchestrator, dlq = started

        redis_server.stop()
        stopped_at = time.monotonic()
        # Down for a few seconds, long enough for each loop to fail several times.
        wait_for(
            lambda: (
                time.monotonic() - stopped_at > 3 and all("unreachable" in p.log() for p in started)
            ),
            30,
            what="both processes to notice the outage",
        )
        redis_server.start()  # the same port
        wait_for(
            lambda: all("reachable again" in p.log() for p in started),
            30,
            what="both processes to say Redis is back",
        )
    finally:
        for process in started:
            process.stop()
        redis_server.stop()
    for process in started:
        log = process.log()
        lines = log.splitlines()
        assert "Traceback" not in log, log
        [down] = [line for line in lines if "unreachable" in line]
        assert "Redis unreachable: " in down, log  # and why, in the same line
        [back] = [line for line in lines if "reachable again" in line]
        assert "Redis reachable again after" in back and "failed attempts)" in back, log
    assert "orchestrator" in orchestrator.log() and "DLQ worker" in dlq.log()
