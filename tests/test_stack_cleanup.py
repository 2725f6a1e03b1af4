"""The tests' own machinery on a busy machine: a stack whose start fails half way stops
what it had started (no redis-server or worker left running, each one waited for), a
process that never becomes ready is stopped, and PostgreSQL is chosen once per run; a
server that stops answering later gets one clear error, not an AttributeError."""

from __future__ import annotations

import os
import sys

import psycopg
import pytest

from tests import stack as stack_module
from tests import support
from tests.stack import Stack
from tests.support import PostgresDatabases, PostgresUnavailable, ServiceProcess, free_port


def _alive(pid: int) -> bool:
    """Whether the pid is still a process, a zombie included: a stopped process that was
    waited for is gone entirely."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _kill_if_left(*procs) -> None:
    """Whatever a failed test left behind, stopped here so it does not outlive the test."""
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(30)


class RelayWithABadSetting(Stack):
    """A stack whose last start step fails: the relay refuses its SERVICES and exits at
    once, after Redis, the databases and the orchestrator are up."""

    def start_relay(self, **env):
        return super().start_relay(SERVICES="nowhere", **env)


def test_a_stack_whose_start_fails_half_way_stops_what_it_started(tmp_path):
    stack = RelayWithABadSetting("sqlite", tmp_path)
    try:
        with pytest.raises(RuntimeError, match=r"(?s)relay exited.*SERVICES names nowhere"):
            stack.start()
        redis_pid = stack.redis.proc.pid
        orchestrator_pid = stack.orchestrator.proc.pid
        assert not _alive(redis_pid), f"redis-server {redis_pid} left running"
        assert not _alive(orchestrator_pid), f"orchestrator {orchestrator_pid} left running"
        assert not stack.redis._answers()
    finally:
        _kill_if_left(stack.redis.proc, getattr(getattr(stack, "orchestrator", None), "proc", None))


class NeverReady(ServiceProcess):
    """A process that runs but never says it is ready (a worker that hangs at start)."""

    name, ready_marker = "never-ready", b"this is never printed"
    ready_seconds = 2

    def argv(self) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(600)"]


def test_a_process_that_never_becomes_ready_is_stopped(tmp_path):
    proc = NeverReady({}, tmp_path)
    try:
        with pytest.raises(RuntimeError, match="never-ready was not ready after"):
            proc.start()
        assert not _alive(proc.proc.pid), f"{proc.proc.pid} left running"
        assert proc._log.closed
    finally:
        _kill_if_left(proc.proc)


def test_postgresql_gone_after_the_choice_is_one_clear_error_and_stops_redis(tmp_path, monkeypatch):
    gone = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"  # nothing listens
    monkeypatch.setattr(stack_module, "postgres_admin_url", lambda: gone)
    monkeypatch.setattr(PostgresDatabases, "deadline", 1.0)
    stack = Stack("postgresql", tmp_path)
    try:
        with pytest.raises(PostgresUnavailable) as raised:
            stack.start()
        message = str(raised.value)
        assert "PostgreSQL was chosen at the start of this test run" in message
        assert "no longer answers" in message and "OperationalError" in message
        assert not _alive(stack.redis.proc.pid), "redis-server left running"
    finally:
        _kill_if_left(stack.redis.proc)


def test_the_backends_are_chosen_once_per_run(monkeypatch):
    chosen = support.postgres_admin_url()

    def refuse(*args, **kwargs):
        raise psycopg.OperationalError("too many clients already")

    # Another program took every connection meanwhile: the choice made at the start of
    # the run stands (what uses it then fails clearly, above).
    monkeypatch.setattr(support.psycopg, "connect", refuse)
    assert support.postgres_admin_url() == chosen
    assert stack_module.available_backends() == (["sqlite", "postgresql"] if chosen else ["sqlite"])
