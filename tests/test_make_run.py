"""`make run` as a new user runs it: no terminal, a private Redis, SQLite under VAR_DIR, the
demo catalogue, every Procfile process; an order completes; SIGTERM stops everything."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from app.workflows import SERVICES
from config.settings import REPO_ROOT
from tests.support import free_port, kill_session, patient, track, wait_for


def _call(url: str, body: dict | None = None, auth: str | None = None, header_file=None):
    headers = {"Content-Type": "application/json"}
    if auth:
        import base64

        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    if header_file is not None:  # what `curl -H @file` sends
        name, _, value = header_file.read_text().strip().partition(": ")
        headers[name] = value
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, None
    except (OSError, ValueError):
        return 0, None


def _command_lines() -> str:
    """Every command line on the machine, as `ps` shows them."""
    return subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True).stdout


def _listening(port: int) -> bool:
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) != 0:
            return False
        # With nothing listening, a connect to a port in the ephemeral range can still
        # succeed when the kernel picks that very port as its source: a self-connection.
        return s.getsockname() != s.getpeername()


def _closes_within(port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _listening(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _who_listens(port: int) -> str:
    shown = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True)
    return shown.stdout.strip() or "nothing listed by ss (a connection to itself?)"


FLOWER_PASSWORD = "flower-pw-never-shown"
FLOWER_LOGIN = f"ops:{FLOWER_PASSWORD}"


def _plain_shell_env(var_dir) -> dict[str, str]:
    """A shell with none of the system's settings: only where make run's files are."""
    keep = ("PATH", "HOME", "LANG")
    return {**{k: os.environ[k] for k in keep if k in os.environ}, "VAR_DIR": str(var_dir)}


# How a stop reaches make run: its own pid (a supervisor), its whole process group (a
# supervisor that signals groups, or Ctrl-C in a shell), or SIGINT to the group (Ctrl-C).
STOPS = {
    "sigterm-to-its-pid": lambda run: run.send_signal(signal.SIGTERM),
    "sigterm-to-its-group": lambda run: os.killpg(run.pid, signal.SIGTERM),
    "ctrl-c-to-its-group": lambda run: os.killpg(run.pid, signal.SIGINT),
}


@pytest.mark.parametrize("stop", list(STOPS))
def test_make_run_serves_a_working_saga_and_stops_everything_however_signalled(tmp_path, stop):
    port, flower_port, redis_port = free_port(), free_port(), free_port()
    env = {
        k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.endswith("_DATABASE_URL")
    }
    env.update(
        PORT=str(port),
        FLOWER_PORT=str(flower_port),
        REDIS_PORT=str(redis_port),
        VAR_DIR=str(tmp_path / "var"),
        FLOWER_BASIC_AUTH=FLOWER_LOGIN,
    )
    with open(tmp_path / "run.log", "wb") as log:  # make holds its own copy
        run = track(
            subprocess.Popen(
                ["make", "run"],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    try:
        _serves_and_stops(run, stop, tmp_path, port, flower_port, redis_port)
    finally:
        # Whatever a failed start or stop left in make run's session (its Redis, a worker)
        # is killed here, so it does not outlive the test; the checks above named it.
        kill_session(run.pid)
        if run.poll() is None:
            run.kill()
        run.wait(patient(30))


def _serves_and_stops(run, stop, tmp_path, port, flower_port, redis_port) -> None:
    api = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: _call(f"{api}/healthz")[0] == 200 or run.poll() is not None,
            120,
            interval=0.5,
            what="make run to serve /healthz",
        )
        assert run.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
        products = {p["name"]: p for p in _call(f"{api}/products")[1]}
        beans = products["Coffee beans 1kg"]
        customer = tmp_path / "var" / "credentials" / "customer-1.header"
        assert _call(f"{api}/users/1/coupons")[0] == 401
        coupon = _call(f"{api}/users/1/coupons", header_file=customer)[1][0]
        status, placed = _call(
            f"{api}/orders",
            {
                "items": [{"product_id": beans["id"], "quantity": 1}],
                "issued_coupon_id": coupon["id"],
            },
            header_file=customer,
        )
        assert status == 202
        order = wait_for(
            lambda: (
                (o := _call(f"{api}/orders/{placed['order_id']}", header_file=customer)[1])
                and o["status"] == "COMPLETED"
                and o
            ),
            60,
            what="the demo order",
        )
        assert order["paid"] == beans["price"] - 500
        assert _call(f"http://127.0.0.1:{flower_port}/api/workers", auth=FLOWER_LOGIN)[0] == 200
        assert _call(f"http://127.0.0.1:{flower_port}/api/workers")[0] == 401
        # No secret on any command line (what `ps` shows) or in what `make run` printed.
        token = customer.read_text().split()[-1]
        shown = _command_lines() + (tmp_path / "run.log").read_text()
        assert "python -m tasks.flower" in shown and "gunicorn" in shown
        for secret in (FLOWER_PASSWORD, token):
            assert secret not in shown
        if stop == "sigterm-to-its-pid":
            _the_cli_reaches_it_from_a_plain_shell(tmp_path / "var", placed["order_id"])
    finally:
        STOPS[stop](run)
        run.wait(patient(60))
    for listened in (port, flower_port, redis_port):
        # A process that exited has closed its socket; one that did not is named here.
        closed = _closes_within(listened, 10)
        assert closed, f"port {listened} still open after the stop: {_who_listens(listened)}"
    survivors = subprocess.run(["pgrep", "-s", str(run.pid)], capture_output=True, text=True)
    assert survivors.stdout.strip() == "", "processes left behind"
    assert (tmp_path / "var" / "orders.db").exists()


def _the_cli_reaches_it_from_a_plain_shell(var_dir, order_id: int) -> None:
    """What an alert prints works as printed: saga-dlq, and python -m dlq from any
    Python, find the running system through the settings make run wrote."""
    env = _plain_shell_env(var_dir)
    settings = (var_dir / "saga.env").read_text()
    assert "REDIS_URL=" in settings
    # Every service's database, the workflows' list (app.workflows.SERVICES), not five names.
    for service in SERVICES:
        assert f"\n{service.upper()}_DATABASE_URL=" in settings, service
    command = settings.split("SAGA_CLI=", 1)[1].splitlines()[0]
    listed = subprocess.run(
        [command, "list", "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []  # the private Redis, not one on 6379
    missing = subprocess.run(
        [command, "show", f"order-{order_id}:use_balance"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 3 and "no DLQ entry" in missing.stderr
    system_python = subprocess.run(
        ["python3", "-m", "dlq", "list"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert system_python.returncode == 0, system_python.stderr
    assert "The DLQ is empty." in system_python.stdout
