"""Say an outage once: when it starts, and when it is over.

A process's loop retries every second or so while Redis or a database is down. Logging a
traceback on each attempt buries everything else (29 tracebacks for a 10-second Redis
restart), and says nothing the first line did not. `OutageReporter` logs one line when the
outage starts, with its cause in one line, counts the failed attempts quietly, and logs
one line when the dependency answers again, with how long it lasted and how many attempts
failed. An error that is not a connection problem (a bug) still logs its traceback, at
most once per `trace_every` seconds, saying how many it left out.

    outage = OutageReporter(log)              # names what is down from the error
    while not stop.is_set():
        try:
            work()
        except Exception as exc:
            outage.failed(exc)
            stop.wait(1.0)
        else:
            outage.ok()

    Redis unreachable: ConnectionError: Error 111 connecting to 127.0.0.1:6390. Connection refused.
    Redis reachable again after 10.2 s (29 failed attempts)

Not thread-safe: one reporter per loop.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

from sqlalchemy.exc import DBAPIError

from sagaflow._dependencies import unreachable

# user:password@ in any URL an error message quotes: the password never reaches a log.
_CREDENTIALS = re.compile(r"(://[^/@\s:]*):[^/@\s]*@")


def cause(exc: BaseException) -> str:
    """An error in one line, `Type: first line of its message`, without credentials."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig  # SQLAlchemy's own text adds the statement and a help link
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return _CREDENTIALS.sub(r"\1:***@", text)[:300]


class OutageReporter:
    """One line when an outage starts, one when it ends; tracebacks of bugs rate-limited.

    - `failed(exc)` after every failed attempt. A connection problem (`classify(exc)`
      names what could not be reached) starts an outage or counts one more attempt in it;
      returns True. Anything else is a bug: its traceback is logged at most once per
      `trace_every` seconds; returns False.
    - `ok()` after every attempt that worked: ends the outage, if there is one.
    - `down`: whether an outage is going on.

    `what` names the dependency in the messages ("Redis"); by default the name comes from
    `classify` (sagaflow._dependencies.unreachable: "Redis", "the broker", "a database").
    `clock` is injectable for tests.
    """

    def __init__(
        self,
        log: logging.Logger,
        what: str | None = None,
        *,
        classify: Callable[[BaseException], str | None] = unreachable,
        clock: Callable[[], float] = time.monotonic,
        trace_every: float = 60.0,
    ):
        self.log, self.what, self.classify, self.clock = log, what, classify, clock
        self.trace_every = trace_every
        self._down: str | None = None  # the name of what is unreachable
        self._since = 0.0
        self._attempts = 0
        self._traced_at: float | None = None
        self._untraced = 0

    @property
    def down(self) -> bool:
        return self._down is not None

    def failed(self, exc: BaseException) -> bool:
        name = self.classify(exc)
        if name is None:
            self._bug(exc)
            return False
        self._attempts += 1
        if self._down is None:
            self._down, self._since, self._attempts = self.what or name, self.clock(), 1
            self.log.warning("%s unreachable: %s", self._down, cause(exc))
        else:
            self.log.debug("%s still unreachable: %s", self._down, cause(exc))
        return True

    def ok(self) -> None:
        if self._down is None:
            return
        self.log.warning(
            "%s reachable again after %.1f s (%d failed attempts)",
            self._down,
            self.clock() - self._since,
            self._attempts,
        )
        self._down, self._attempts = None, 0

    def _bug(self, exc: BaseException) -> None:
        now = self.clock()
        if self._traced_at is not None and now - self._traced_at < self.trace_every:
            self._untraced += 1
            return
        left_out = f" ({self._untraced} more since the last one)" if self._untraced else ""
        self.log.error("unexpected error, retrying: %s%s", cause(exc), left_out, exc_info=exc)
        self._traced_at, self._untraced = now, 0
