"""The requeue CLI as an operator runs it (a real process), and the DLQ store on a real
Redis: one entry per piece of work, kept across a Redis restart when Redis persists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from sagaflow.dlq.store import DeadLetterStore
from tests.stack import Stack
from tests.support import free_port


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack("sqlite", tmp_path_factory.mktemp("cli"), redis_persist=True).start()
    yield stack
    stack.stop()


def _park(stack, order_id: int, name: str = "use_balance", kind: str = "step", store=None):
    """Park a step whose input is not known (no ctx): it cannot be sent again."""
    return (store or stack.rt.dead_letters).push(
        saga_id=f"order-{order_id}",
        workflow="order",
        name=name,
        kind=kind,
        task=f"saga.{name}",
        args={"saga_id": f"order-{order_id}", "ctx": None, "then": []},
        error_class="StepTimeout",
        error="too slow",
        traceback="",
    )


def test_the_same_work_is_never_in_the_dlq_twice(stack):
    first = _park(stack, 101)
    second = _park(stack, 101)
    assert first["id"] == second["id"] == "order-101:use_balance"
    assert second["handoffs"] == 2
    entries = stack.rt.dead_letters.entries(saga_id="order-101")
    assert [e["id"] for e in entries] == ["order-101:use_balance"]


def test_entries_survive_a_redis_restart_with_persistence(stack):
    _park(stack, 102, "publish_order", "publish")
    stack.redis.stop()
    stack.redis.start()  # same port, same data directory: it reloads the append-only file
    entry = stack.rt.dead_letters.get("order-102:publish_order")
    assert entry["kind"] == "publish" and entry["status"] == "retrying"


def test_list_json_prints_entries_with_the_documented_fields(stack):
    _park(stack, 103)
    result = stack.cli("list", "--json", "--saga", "order-103")
    assert result.returncode == 0, result.stderr
    [entry] = json.loads(result.stdout)
    assert {"id", "saga_id", "name", "kind", "status", "attempts", "error"} <= entry.keys()
    assert (entry["saga_id"], entry["name"], entry["kind"], entry["status"]) == (
        "order-103",
        "use_balance",
        "step",
        "retrying",
    )


@pytest.mark.parametrize(
    "args",
    [
        ("show", "nope:step"),
        ("requeue", "order-404:use_balance"),
        ("compensate", "order-404:use_balance"),
        ("resolve", "order-404:use_balance", "--note", "x"),
    ],
)
def test_unknown_ids_get_one_line_and_exit_3(stack, args):
    result = stack.cli(*args)
    assert result.returncode == 3
    assert result.stderr.strip().count("\n") == 0 and "no DLQ entry" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_usage_exits_2_and_unreachable_redis_exits_4(stack):
    assert stack.cli("requeue").returncode == 2
    assert stack.cli("list", "--status", "bogus").returncode == 2
    down = stack.cli("list", REDIS_URL="redis://127.0.0.1:9/0")
    assert down.returncode == 4 and "cannot reach Redis" in down.stderr
    assert "Traceback" not in down.stderr


def test_compensate_refuses_a_compensation_entry(stack):
    _park(stack, 104, "refund_balance", "compensation")
    result = stack.cli("compensate", "order-104:refund_balance")
    assert result.returncode == 1 and "only a stuck forward step" in result.stderr


def test_resolve_then_purge_deletes_only_resolved_entries(stack):
    _park(stack, 105)
    _park(stack, 106)
    assert (
        stack.cli("resolve", "order-105:use_balance", "--note", "refunded by hand").returncode == 0
    )
    refused = stack.cli("purge")  # no terminal and no --yes: nothing is deleted
    assert refused.returncode == 1 and stack.rt.dead_letters.get("order-105:use_balance")
    purged = stack.cli("purge", "--yes", "--json")
    assert purged.returncode == 0 and json.loads(purged.stdout)["purged"] >= 1
    assert stack.rt.dead_letters.get("order-105:use_balance") is None
    assert stack.rt.dead_letters.get("order-106:use_balance")["status"] == "retrying"


def test_the_cli_is_installed_as_the_saga_dlq_command(stack, tmp_path):
    _park(stack, 107)
    command = Path(sys.executable).with_name("saga-dlq")
    result = subprocess.run(
        [str(command), "show", "order-107:use_balance", "--json"],
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["entry"]["id"] == "order-107:use_balance"
    assert shown["saga"] is None  # parked work whose saga is gone is still shown
    text = stack.cli("show", "order-107:use_balance")
    assert text.returncode == 0 and "not in the saga log" in text.stdout


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sqlite:///{tmp}/missing/orders.db", "unable to open database file"),
        ("sqlite:///{tmp}/absent.db", "unable to open database file"),
        ("sqlite:///{tmp}/not-a-database.db", "file is not a database"),
        ("not a url at all", "ORDERS_DATABASE_URL is not a database URL"),
        ("mysql://ops:hunter2@127.0.0.1/orders", "needs the driver"),
        ("postgresql+psycopg://ops:hunter2@127.0.0.1:9/orders", "cannot use the orders database"),
    ],
)
def test_an_unusable_database_url_is_one_line_exit_4_and_creates_nothing(
    stack, tmp_path, url, says
):
    _park(stack, 108)
    (tmp_path / "not-a-database.db").write_text("this is text, not SQLite " * 100)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for args in (
        ("show", "order-108:use_balance"),
        ("requeue", "order-108:use_balance", "--dry-run"),
    ):
        result = stack.cli(*args, ORDERS_DATABASE_URL=url.format(tmp=tmp_path))
        assert result.returncode == 4, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and says in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and "hunter2" not in result.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no empty database made


@pytest.mark.parametrize(
    "args",
    [("requeue",), ("list", "--status", "bogus"), ("frobnicate",), ("show",), ("list", "--x")],
)
def test_usage_errors_are_one_line_and_exit_2(stack, args):
    result = stack.cli(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")


# --- an unusable REDIS_URL: one line, exit 4, whatever the command ---------------------

X = "order-1:use_balance"
EVERY_COMMAND = [
    ("list",),
    ("show", X),
    ("requeue", X),
    ("requeue", "--all"),
    ("requeue", "--all", "--dry-run"),
    ("compensate", X),
    ("resolve", X, "--note", "n"),
    ("purge", "--yes"),
    ("worker",),
]
UNUSABLE_REDIS_URLS = {
    "not a url": "notaurl",  # the issue's own example
    "no scheme": "ops:hunter2@127.0.0.1:{port}/0",
    "unknown scheme": "memcached://ops:hunter2@127.0.0.1:{port}/0",
    "malformed port": "redis://ops:hunter2@127.0.0.1:notaport/0",
    "unknown option": "redis://ops:hunter2@127.0.0.1:{port}/0?colour=blue",
    "nothing listening": "redis://ops:hunter2@127.0.0.1:{closed}/0",
    "wrong password": "redis://ops:hunter2@127.0.0.1:{port}/0",
}


# Every kind of URL on one command, and every command on the two kinds that fail at
# different moments (before connecting, and when Redis refuses the credentials): each case
# starts the real CLI, so the whole product of the two would cost minutes.
CASES = [(case, EVERY_COMMAND[0]) for case in UNUSABLE_REDIS_URLS] + [
    (case, args) for case in ("not a url", "wrong password") for args in EVERY_COMMAND[1:]
]


@pytest.mark.parametrize("case,args", CASES, ids=[f"{c}-{' '.join(a)}" for c, a in CASES])
def test_an_unusable_redis_url_is_one_line_and_exit_4_for_every_command(stack, case, args):
    url = UNUSABLE_REDIS_URLS[case].format(port=stack.redis.port, closed=free_port())
    result = stack.cli(*args, REDIS_URL=url)
    said = (args, result.stderr)
    assert result.returncode == 4, said
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), said
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr, said
    assert result.stdout == "", (args, result.stdout)


# --- requeue --all: every entry is tried ---------------------------------------------


@pytest.fixture
def own_dlq(stack):
    """A Redis database of its own: `requeue --all` takes every entry, and the other tests
    of this module leave theirs in database 0."""
    url = stack.redis.url.rsplit("/", 1)[0] + "/9"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url, DeadLetterStore(client, lambda attempts: 3600)
    finally:
        client.flushdb()
        client.close()


def _park_message(store, order_id: int, stream: str):
    """A data-platform event its relay gave up on: sending it is one XADD, and it closes
    its entry at once, so no worker is needed to see it succeed."""
    row = 9_000 + order_id
    return store.push(
        saga_id=f"order-{order_id}",
        workflow="order",
        name=f"outbox:dataplatform:{row}",
        kind="after_pivot",
        task="outbox.stream",
        args={
            "saga_id": f"order-{order_id}",
            "outbox": {
                "kind": "stream",
                "payload": {"stream": stream, "fields": {"order_id": str(order_id)}},
                "message_id": f"outbox-dataplatform-{row}",
            },
        },
        error_class="ConnectionError",
        error="the broker was down",
        traceback="",
    )


def test_requeue_all_tries_every_entry_says_what_it_did_and_exits_1_after(stack, own_dlq):
    url, store = own_dlq
    stuck = _park(stack, 203, store=store)["id"]  # first in line, and it cannot be sent
    sendable = _park_message(store, 204, "test.requeue-all")["id"]

    plan = stack.cli("requeue", "--all", "--dry-run", REDIS_URL=url)
    assert plan.returncode == 0, plan.stderr
    [stuck_line] = [line for line in plan.stdout.splitlines() if line.startswith(stuck)]
    assert "would fail because" in stuck_line and "input is not known" in stuck_line
    assert any(line.startswith(f"{sendable}: would run") for line in plan.stdout.splitlines())
    assert store.get(sendable)["status"] == "retrying"  # a dry run changes nothing

    done = stack.cli("requeue", "--all", REDIS_URL=url)
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stdout.splitlines()
    [stuck_line] = [line for line in lines if line.startswith(f"{stuck}:")]
    assert "failed because" in stuck_line and "input is not known" in stuck_line, lines
    [sent_line] = [line for line in lines if line.startswith(f"{sendable}:")]
    assert "sent" in sent_line and "failed" not in sent_line, lines
    assert "2 tried: 1 sent, 1 failed, 0 skipped" in lines[-1], lines
    assert done.stderr.count("\n") == 1 and stuck in done.stderr, done.stderr
    # Both were tried: the one after the failure went out and closed its entry.
    assert store.get(sendable)["status"] == "resolved"
    assert store.redis.xlen("test.requeue-all") == 1
    # What could not be sent is left as it was, for the DLQ worker (it waits for the input).
    assert (store.get(stuck)["status"], store.get(stuck)["attempts"]) == ("retrying", 0)

    # --json says the same, one object per entry tried.
    again = _park_message(store, 205, "test.requeue-all")["id"]
    as_json = stack.cli("requeue", "--all", "--json", REDIS_URL=url)
    assert as_json.returncode == 1, as_json.stderr
    results = {r["id"]: r for r in json.loads(as_json.stdout)}
    assert (results[stuck]["result"], results[stuck]["ok"]) == ("failed", False)
    assert (results[again]["result"], results[again]["ok"]) == ("sent", True)
    assert sendable not in results  # resolved: nothing to do


def test_requeue_all_with_only_resolved_entries_has_nothing_to_do(stack, own_dlq):
    url, store = own_dlq
    for order_id in (206, 207):
        store.resolve(_park(stack, order_id, store=store)["id"], "fixed by hand")
    for extra in ((), ("--dry-run",)):
        result = stack.cli("requeue", "--all", *extra, REDIS_URL=url)
        assert result.returncode == 0, (extra, result.stderr)
        assert "nothing to do" in result.stdout, (extra, result.stdout)
    as_json = stack.cli("requeue", "--all", "--json", REDIS_URL=url)
    assert as_json.returncode == 0 and json.loads(as_json.stdout) == [], as_json.stdout
