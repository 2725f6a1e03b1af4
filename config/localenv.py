"""The settings `make run` chose, for every later command run from a plain shell.

`make run` writes them (where Redis is, each database, the token keys, the ports) to
`$VAR_DIR/saga.env`. The operator's commands (`saga-dlq`, `python -m dlq`,
`python -m app.auth`, `make demo`) read that file, so what an alert prints reaches the
system that sent it. A value already in the environment wins; the long-running processes
never read the file: they get their settings from whoever starts them.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import MutableMapping
from pathlib import Path

from config.settings import REPO_ROOT

FILENAME = "saga.env"


def env_file(environ: MutableMapping[str, str] = os.environ) -> Path:
    if environ.get("SAGA_ENV_FILE"):
        return Path(environ["SAGA_ENV_FILE"])
    return Path(environ.get("VAR_DIR") or REPO_ROOT / "var") / FILENAME


def parse(text: str) -> dict[str, str]:
    """KEY=VALUE lines, values shell-quoted (what `make run` writes); # comments."""
    found = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.removeprefix("export ").strip()
        parts = shlex.split(value, comments=False) if value.strip() else [""]
        found[key] = parts[0] if parts else ""
    return found


def load_local_env(environ: MutableMapping[str, str] = os.environ) -> Path | None:
    """Fill the environment from the file, if there is one; returns its path."""
    path = env_file(environ)
    try:
        values = parse(path.read_text())
    except FileNotFoundError:
        return None
    for key, value in values.items():
        environ.setdefault(key, value)
    return path
