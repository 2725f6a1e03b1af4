"""sagaflow installs on its own: a fresh virtualenv with only `packaging/sagaflow` (and
what it depends on: Celery, redis, SQLAlchemy, pydantic) runs the README's quickstart, a
two-step workflow with one compensation, on a real Redis and a real Celery worker."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.support import REPO_ROOT, RedisServer, ServiceProcess, patient

PACKAGE = REPO_ROOT / "packaging" / "sagaflow"
QUICKSTART = PACKAGE / "quickstart.py"


def _run(argv, cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=patient(timeout)
    )


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    """A virtualenv with sagaflow and its own dependencies only. The versions are the
    project's (a constraints file from this environment), so pip takes them from its
    cache where it can."""
    where = tmp_path_factory.mktemp("sagaflow-venv")
    venv.EnvBuilder(with_pip=True).create(where / "venv")
    frozen = _run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], where)
    pins = [line for line in frozen.stdout.splitlines() if "==" in line and "[" not in line]
    (where / "constraints.txt").write_text("\n".join(pins) + "\n")
    pip = [str(where / "venv" / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    installed = _run(
        [*pip, "install", "-q", "-c", str(where / "constraints.txt"), str(PACKAGE)], where
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    return where / "venv"


class QuickstartWorker(ServiceProcess):
    name, ready_marker = "quickstart-worker", b"ready."

    def __init__(self, env, logdir, venv_dir: Path, cwd: Path):
        super().__init__(env, logdir)
        self.venv_dir, self.cwd = venv_dir, cwd

    def argv(self) -> list[str]:
        return [
            str(self.venv_dir / "bin" / "celery"), "-A", "quickstart", "worker",
            "-Q", "wallet,receipts", "-c", "2", "--without-mingle", "--without-gossip",
            "--loglevel", "INFO",
        ]  # fmt: skip


def test_the_package_holds_sagaflow_and_nothing_of_the_shop(fresh_venv, tmp_path):
    python = str(fresh_venv / "bin" / "python")
    found = _run(
        [python, "-c", "import sagaflow, sagaflow._runtime; print(sagaflow.__version__)"], tmp_path
    )
    assert found.returncode == 0, found.stderr
    assert (
        found.stdout.strip()
        == _run(
            [sys.executable, "-c", "import sagaflow; print(sagaflow.__version__)"], REPO_ROOT
        ).stdout.strip()
    )
    for shop in ("app", "tasks", "config", "flask"):
        missing = _run([python, "-c", f"import {shop}"], tmp_path)
        assert missing.returncode != 0, f"{shop} is importable from the sagaflow-only venv"
    typed = _run(
        [
            python,
            "-c",
            "import sagaflow, pathlib; print((pathlib.Path(sagaflow.__file__).parent"
            " / 'py.typed').exists())",
        ],
        tmp_path,
    )  # noqa: E501
    assert typed.stdout.strip() == "True"


def test_the_readme_quickstart_runs_in_a_fresh_venv(fresh_venv, tmp_path):
    readme = (REPO_ROOT / "README.md").read_text()
    assert QUICKSTART.read_text() in readme, "the README's quickstart is not quickstart.py"
    work = tmp_path / "app"
    work.mkdir()
    shutil.copy(QUICKSTART, work / "quickstart.py")
    redis = RedisServer(tmp_path / "redis").start()
    worker = None
    try:
        env = {"REDIS_URL": redis.url, "QUICKSTART_DB": f"sqlite:///{work / 'wallet.db'}"}
        # The worker creates the database file on first use; the tables are made by the
        # quickstart's main(), before any step runs.
        worker = QuickstartWorker(env, tmp_path / "logs", fresh_venv, work).start()
        python = str(fresh_venv / "bin" / "python")
        completed = _run([python, "quickstart.py", "300"], work, {**worker.env}, timeout=120)
        assert completed.returncode == 0, completed.stderr[-3000:] + worker.log()[-3000:]
        assert "COMPLETED: credit succeeded, receipt succeeded" in completed.stdout
        failed = _run([python, "quickstart.py", "5000"], work, {**worker.env}, timeout=120)
        assert failed.returncode == 0, failed.stderr[-3000:] + worker.log()[-3000:]
        assert "FAILED: credit failed, receipt not_run, debit succeeded" in failed.stdout
    finally:
        if worker is not None:
            worker.stop()
        redis.stop()
