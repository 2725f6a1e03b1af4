"""What every long-running process of the shop does around its loop: read the settings,
set up logging, build, and run until SIGTERM or Ctrl-C."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

from app.logs import configure_logging
from config.settings import Settings, SettingsError
from sagaflow import tracing


def run_until_stopped(build: Callable[[Settings], object], role: str) -> None:
    """`build(settings)` returns something with `run(stop: threading.Event)`."""
    try:
        settings = Settings.from_env()
        configure_logging(settings.log_level, settings.log_format, role)
        tracing.configure(role)
        loop = build(settings)
    except SettingsError as exc:  # a wrong setting: say which, in one line
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    loop.run(stop)
