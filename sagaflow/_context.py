"""What piece of saga work this thread is doing now, for log lines (and, later, traces):
the saga id, workflow, step, attempt and task id. The Celery adapter sets it around each
task; a log formatter reads it (`current_work()`), so every line the work logs, ours or a
library's, says which saga it belongs to without each call site repeating it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_WORK: ContextVar[dict[str, Any] | None] = ContextVar("sagaflow_work", default=None)


@contextmanager
def working_on(**fields: Any) -> Iterator[None]:
    """Within the block, `current_work()` returns these fields (those that are not None)."""
    token = _WORK.set({k: v for k, v in fields.items() if v not in (None, "")})
    try:
        yield
    finally:
        _WORK.reset(token)


def current_work() -> dict[str, Any]:
    return dict(_WORK.get() or {})
