"""Flower for the saga's broker: `python -m tasks.flower --port=5555 --address=127.0.0.1`.

What it adds to `celery -A tasks.worker flower`:
- the login never goes on a command line (where `ps` shows it): Flower reads
  FLOWER_BASIC_AUTH from the environment itself, or this launcher reads it from the file
  FLOWER_BASIC_AUTH_FILE names (what `make run` does); with neither it refuses to start,
  rather than serve every task's arguments to anyone;
- Flower's /metrics (task counts and timings by task and worker name, for Prometheus)
  asks for the same login as every other page. /healthcheck stays open: it says "OK" and
  nothing else, for a supervisor's liveness probe.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _login_from_file() -> None:
    path = os.environ.get("FLOWER_BASIC_AUTH_FILE")
    if os.environ.get("FLOWER_BASIC_AUTH") or not path:
        return
    try:
        os.environ["FLOWER_BASIC_AUTH"] = Path(path).read_text().strip()
    except OSError as exc:
        sys.exit(f"error: cannot read FLOWER_BASIC_AUTH_FILE ({path}): {exc.strerror}")


def _protect_metrics() -> None:
    import tornado.web
    from flower.views.monitor import Metrics

    Metrics.get = tornado.web.authenticated(Metrics.get)


def main() -> None:
    _login_from_file()
    if ":" not in os.environ.get("FLOWER_BASIC_AUTH", ""):
        sys.exit("error: set FLOWER_BASIC_AUTH=user:password or FLOWER_BASIC_AUTH_FILE")
    _protect_metrics()
    from celery.bin.celery import main as celery

    sys.argv = ["celery", "-A", "tasks.worker", "flower", *sys.argv[1:]]
    celery()


if __name__ == "__main__":
    main()
