"""One Database per service: its own engine, its own sessions, nothing shared with another.

SQLite needs care under several worker processes: WAL lets readers run beside a writer,
and write transactions start with BEGIN IMMEDIATE so two writers queue on the busy
timeout instead of failing when a read lock cannot be upgraded.

Only migrations (the owner's: the shop's app/schema.py) create a database, or a caller
that asks (`create=True`). A process pointed at a SQLite file that is not there fails on
first use instead of quietly creating an empty one (which would split the truth between
two files).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Protocol

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session

SQLITE_BUSY_TIMEOUT_MS = 30_000
# The snapshots held open here (Database.snapshot), by database: its read()s join them.
_SNAPSHOTS: ContextVar[dict[int, Session] | None] = ContextVar("sagaflow_snapshots", default=None)


class DatabaseHandle(Protocol):
    """What the runtime needs of a service's database (a Database is one): a transaction
    and a consistent read, each a session; and whether it is SQLite (the outbox claims its
    rows otherwise there)."""

    @property
    def is_sqlite(self) -> bool: ...

    def write(self) -> AbstractContextManager[Session]: ...

    def read(self) -> AbstractContextManager[Session]: ...


def _sqlite_engine(url: str, begin: str, create: bool) -> Engine:
    path = url.split("sqlite:///", 1)[-1]
    if create and path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    elif path and path != ":memory:" and "?" not in path:
        # Open read-write, never create: a missing file is an error, not an empty database.
        url = f"sqlite:///file:{path}?mode=rw&uri=true"
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        # Hand transaction control to the "begin" hook below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql(begin)

    return engine


class Database:
    """A service's database: `write()` for a transaction, `read()` for a consistent read."""

    def __init__(
        self, url: str, create: bool = False, pool_size: int = 5, max_overflow: int = 10
    ) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self._writer = _sqlite_engine(url, "BEGIN IMMEDIATE", create)
            self._reader = _sqlite_engine(url, "BEGIN", create)
        else:
            # `pool_size` connections stay open per process and database; bursts borrow up
            # to `max_overflow` more, closed after use. A server's connections are shared
            # by every process of every service: keep the resident ones few.
            self._writer = create_engine(
                url, pool_pre_ping=True, pool_size=pool_size, max_overflow=max_overflow
            )
            self._reader = self._writer

    @property
    def engine(self) -> Engine:
        return self._writer

    @contextmanager
    def write(self) -> Iterator[Session]:
        with Session(self._writer, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        held = (_SNAPSHOTS.get() or {}).get(id(self))
        if held is not None:
            yield held  # inside snapshot(): the moment it holds
            return
        with Session(self._reader, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every read() of this database inside the block sees one moment, so that an
        answer made of several reads (an order and its sagas) never mixes two: one read
        transaction, REPEATABLE READ on PostgreSQL (its default sees each statement's own
        moment); SQLite's read transaction is a snapshot already. For reads only."""
        held = dict(_SNAPSHOTS.get() or {})
        if id(self) in held:
            yield
            return
        bind = self._reader
        if not self.is_sqlite:
            bind = bind.execution_options(isolation_level="REPEATABLE READ")
        with Session(bind, expire_on_commit=False) as session, session.begin():
            held[id(self)] = session
            token = _SNAPSHOTS.set(held)
            try:
                yield
            finally:
                _SNAPSHOTS.reset(token)

    def ping(self) -> None:
        with self._reader.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self._writer.dispose()
        if self._reader is not self._writer:
            self._reader.dispose()


class UnusableDatabaseURL(ValueError):
    """A *_DATABASE_URL that cannot even be turned into an engine."""

    setting = True  # the CLI's "cannot use" exit code


def open_database(service: str, url: str, pool_size: int = 5, max_overflow: int = 10) -> Database:
    """The service's Database, or an error that names the setting (never its password)."""
    setting = f"{service.upper()}_DATABASE_URL"
    try:
        return Database(url, pool_size=pool_size, max_overflow=max_overflow)
    except (ArgumentError, NoSuchModuleError):
        raise UnusableDatabaseURL(f"{setting} is not a database URL SQLAlchemy knows") from None
    except ImportError as exc:
        raise UnusableDatabaseURL(
            f"{setting} needs the driver {exc.name!r}, which is not installed"
        ) from None
