"""What every long-running process of the shop does around its loop: read the settings,
set up logging, build, and run until SIGTERM or Ctrl-C."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

from app.logs import configure_logging
from config.settings import Settings


def run_until_stopped(build: Callable[[Settings], object]) -> None:
    """`build(settings)` returns something with `run(stop: threading.Event)`."""
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    loop = build(settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    loop.run(stop)
