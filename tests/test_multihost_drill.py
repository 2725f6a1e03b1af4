"""The multi-host drill (scripts/multihost_drill.py, `make drill`) as a test: each service's
worker on its own network namespace, reaching only Redis and its own database; an order
completes and a refused one compensates. It needs root and network namespaces; without
them it is skipped, saying why."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import REPO_ROOT


def _namespaces_work() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None or not list(Path("/usr/lib/postgresql").glob("*/bin")):
        return "needs iproute2 and PostgreSQL's server binaries"
    probe = subprocess.run(["ip", "netns", "add", "sgdprobe"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"network namespaces are not available here: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", "sgdprobe"], capture_output=True)
    return None


@pytest.mark.timeout(600)
def test_each_service_on_its_own_host_completes_and_compensates():
    why = _namespaces_work()
    if why:
        pytest.skip(why)
    drill = subprocess.run(
        [sys.executable, "scripts/multihost_drill.py"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=580,
    )
    assert drill.returncode == 0, drill.stdout[-3000:] + drill.stderr[-5000:]
    assert "COMPLETED: create_order on " in drill.stdout
    assert "FAILED at use_balance, compensated" in drill.stdout
    assert "orders' database refuses it" in drill.stdout
