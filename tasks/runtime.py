"""The per-process runtime the tasks use, built on first use after the worker forks."""

from __future__ import annotations

import threading

from app.bootstrap import Runtime, build_runtime
from app.saga.orchestrator import Saga
from config.settings import Settings


class LazySaga:
    """Builds the runtime (engines, Redis client) lazily, so nothing created before a fork
    is shared with the child processes that run tasks."""

    def __init__(self, settings: Settings, dispatcher_factory):
        self.settings = settings
        self._dispatcher_factory = dispatcher_factory
        self._saga: Saga | None = None
        self._lock = threading.Lock()

    @property
    def saga(self) -> Saga:
        if self._saga is None:
            with self._lock:
                if self._saga is None:
                    self._saga = Saga(build_runtime(self.settings), self._dispatcher_factory())
        return self._saga

    @property
    def runtime(self) -> Runtime:
        return self.saga.rt

    def reset(self) -> None:
        """Forget (without closing) what the parent built: its sockets belong to the parent."""
        self._saga = None
