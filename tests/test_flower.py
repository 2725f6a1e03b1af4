"""Flower runs on the same broker behind basic auth and shows the saga's tasks; its login
never is on its command line, and only /healthcheck answers without it."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from config.settings import REPO_ROOT
from tests.support import free_port, stop_process, track, wait_for

pytestmark = pytest.mark.usefixtures("worker")


def _get(url: str, auth: str | None):
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, None
    except (OSError, ValueError):
        return 0, None


def test_flower_shows_a_saga_task_behind_basic_auth(stack_env, shop, tmp_path):
    port, auth = free_port(), "ops:s3cret-flower-pw"
    login_file = tmp_path / "flower-login"
    login_file.write_text(auth + "\n")
    log = open(tmp_path / "flower.log", "wb")
    env = {k: v for k, v in os.environ.items() if k != "FLOWER_BASIC_AUTH"}
    try:
        flower = track(
            subprocess.Popen(
                [sys.executable, "-m", "tasks.flower", f"--port={port}", "--address=127.0.0.1"],
                cwd=REPO_ROOT,
                env={**env, **stack_env, "FLOWER_BASIC_AUTH_FILE": str(login_file)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    except BaseException:
        log.close()
        raise
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _get(f"{base}/api/workers", auth)[0] == 200, 90, what="Flower")
        user = shop.new_user(balance=500)

        def seen_in_flower(order_id):
            status, tasks = _get(f"{base}/api/tasks?taskname=order.create_order", auth)
            return status == 200 and [
                t
                for t in tasks.values()
                if str(order_id) in (t.get("args") or "") and t.get("state") == "SUCCESS"
            ]

        # Flower sees only events sent after its event receiver subscribed, which can be a
        # moment after its HTTP API answers: place orders until one shows up.
        for _ in range(6):
            order_id = shop.wait_order(shop.order(user, shop.product()))["order_id"]
            try:
                [task] = wait_for(lambda o=order_id: seen_in_flower(o), 5, what="the task")
                break
            except AssertionError:
                continue
        else:
            raise AssertionError("Flower never showed a saga task")
        assert task["state"] == "SUCCESS"
        status, info = _get(f"{base}/api/task/info/{task['uuid']}", auth)
        assert status == 200 and info["name"] == "order.create_order"
        assert _get(f"{base}/api/tasks", None)[0] == 401
        assert _get(f"{base}/api/tasks", "ops:wrong")[0] == 401
        assert _get(f"{base}/metrics", None)[0] == 401
        assert _status(f"{base}/metrics", auth) == 200
        assert _status(f"{base}/healthcheck", None) == 200
        command_line = (Path("/proc") / str(flower.pid) / "cmdline").read_bytes()
        assert b"s3cret-flower-pw" not in command_line
    finally:
        stop_process(flower)  # SIGKILL if SIGTERM is not enough; waited for either way
        log.close()
    assert "s3cret-flower-pw" not in (tmp_path / "flower.log").read_text()


def test_flower_refuses_to_start_without_a_login(stack_env):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_BASIC_AUTH")}
    started = subprocess.run(
        [sys.executable, "-m", "tasks.flower", f"--port={free_port()}"],
        cwd=REPO_ROOT,
        env={**env, **stack_env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode != 0
    assert "FLOWER_BASIC_AUTH" in started.stderr


def _status(url: str, auth: str | None) -> int:
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code
