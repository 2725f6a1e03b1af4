"""A dependency that cannot be reached is not a failure of the work.

When a service's database, Redis or the broker does not answer, every piece of work that
touches it fails the same way, and none of them is wrong. Spending their attempts would
turn a five-minute database failover into hundreds of orders parked for a human. So:

- `unreachable(exc, service)` tells such an error from the work's own failures (a lock
  timeout, a deadlock, a bug), and names what could not be reached;
- the work then waits for it: retried with backoff without spending its attempts, for at
  most `outage_budget` seconds (then it is handed to the DLQ like any other failure);
- every process that meets the outage records it on one board in Redis (`OutageBoard`),
  and the DLQ worker alerts once for the outage, naming the dependency, not once per
  order; and once more when it is back.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import redis.exceptions
from kombu.exceptions import OperationalError as BrokerError
from redis import Redis
from sqlalchemy import exc as sa_exc

from sagaflow._errors import error_text

log = logging.getLogger("sagaflow.dependencies")

BOARD = "sagaflow:outages"  # hash: dependency -> JSON {since, last_seen, failures, ...}

# PostgreSQL SQLSTATEs that mean "the server is not there for you now" (class 08,
# connection exceptions, plus shutdown and start-up), not "your statement failed".
_PG_GONE = ("57P01", "57P02", "57P03")
# SQLite: the file cannot be opened or read (a volume gone), not "database is locked".
_SQLITE_GONE = ("SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_NOTADB")


def _database_gone(exc: sa_exc.DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    if isinstance(orig, sqlite3.Error):
        return getattr(orig, "sqlite_errorname", "").startswith(_SQLITE_GONE)
    if not isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        return False
    sqlstate = getattr(orig, "sqlstate", None)
    # A client-side failure to connect (refused, reset, DNS) has no SQLSTATE at all.
    return sqlstate is None or sqlstate.startswith("08") or sqlstate in _PG_GONE


def unreachable(exc: BaseException, service: str = "") -> str | None:
    """What could not be reached ("the products database", "Redis", "the broker"), or None
    when the error is the work's own."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        exc = cause
        seen.add(id(exc))
        # A pool's DisconnectionError is no DBAPIError: it carries no driver error to read.
        if isinstance(exc, sa_exc.DisconnectionError) or (
            isinstance(exc, sa_exc.DBAPIError) and _database_gone(exc)
        ):
            return f"the {service} database" if service else "a database"
        if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
            return "Redis"
        if isinstance(exc, BrokerError):
            return "the broker"
        # An error raised while handling another (an event that could not be written
        # after the database failed) is about whichever was unreachable first.
        cause = exc.__cause__ or exc.__context__
    return None


class OutageBoard:
    """Outages seen by any process, one row per dependency, in Redis. Recording is best
    effort: when Redis itself is the outage, nothing can be written, and the DLQ worker,
    which cannot read the board either, alerts for Redis from its own loop."""

    def __init__(self, client: Redis, clock: Callable[[], float] = time.time) -> None:
        self.redis, self.clock = client, clock

    def record(self, dependency: str, error: BaseException | str) -> None:
        now = self.clock()
        try:
            raw = self.redis.hget(BOARD, dependency)
            row = json.loads(raw) if raw else {}
            if not row or row.get("over"):
                row = {"since": now, "failures": 0, "alerted": False}
            row.update(last_seen=now, failures=row["failures"] + 1, error=error_text(error))
            self.redis.hset(BOARD, dependency, json.dumps(row))
        except redis.exceptions.RedisError:
            pass  # best effort (see the class docstring)

    def back(self, dependency: str) -> None:
        """Work reached `dependency` again: the outage is over (the DLQ worker says so)."""
        try:
            raw = self.redis.hget(BOARD, dependency)
            if raw:
                row = json.loads(raw)
                if not row.get("over"):
                    row["over"] = self.clock()
                    self.redis.hset(BOARD, dependency, json.dumps(row))
        except redis.exceptions.RedisError:
            pass

    def rows(self) -> dict[str, dict[str, Any]]:
        raw = self.redis.hgetall(BOARD)
        return {(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in raw.items()}

    def update(self, dependency: str, **fields: Any) -> None:
        raw = self.redis.hget(BOARD, dependency)
        if raw:
            self.redis.hset(BOARD, dependency, json.dumps({**json.loads(raw), **fields}))

    def forget(self, dependency: str) -> None:
        self.redis.hdel(BOARD, dependency)


def outage_text(dependency: str, row: dict[str, Any], budget: float, now: float) -> str:
    since = time.strftime("%H:%M:%S", time.gmtime(row["since"]))
    lasted = now - row["since"]
    return (
        f":rotating_light: {dependency} cannot be reached since {since} UTC "
        f"({lasted / 60:.1f} min; {row['failures']} failed attempts so far).\n"
        f"Last error: {row.get('error', '')}\n"
        f"Work that needs it waits and resumes by itself when it is back (each piece of "
        f"work waits up to {budget / 60:.0f} min, then goes to the DLQ). Nothing to do per "
        f"order: bring {dependency} back."
    )


def recovered_text(dependency: str, row: dict[str, Any]) -> str:
    lasted = row.get("over", row["last_seen"]) - row["since"]
    return (
        f":white_check_mark: {dependency} answers again after {lasted / 60:.1f} min "
        f"({row['failures']} failed attempts); the waiting work resumes by itself."
    )
