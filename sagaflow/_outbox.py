"""The transactional outbox: a message a service must send is a row written in the same
local transaction as the change that calls for it, so the two cannot disagree; a relay
sends the rows to the broker and marks them sent.

- Per-key order: a row is sent only when every earlier unsent row of the same key (a saga
  id) has been, so one saga's messages leave in the order they were written.
- Several relays: a relay claims rows for a lease before sending. On PostgreSQL the claim
  is `FOR UPDATE SKIP LOCKED`, so relays never wait on one another; on SQLite a write
  transaction (BEGIN IMMEDIATE) is already exclusive, so the claim is a plain
  select-and-update inside it. A relay that dies mid-send leaves its claim to expire.
- Retries with growing delays; after `max_attempts` the message is parked in the DLQ
  (failure class 3), whose worker sends it from there (it needs only Redis, the broker).
- At least once: a crash after the send and before the row is marked sends it again, so
  every message carries its id (`outbox-<service>-<row>`) and consumers deduplicate on it.

The writer may also send a row at once after its commit (the fast path), so a healthy
system does not wait for the relay's poll: a row written held (`enqueue(held_by=...)`) is
left alone by the relays for a lease, and its writer sends it and marks it in one
transaction (`send_held`). A piece of saga work does this for every row it writes
(`AfterCommit`): the relays send only what a writer could not.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from redis import Redis
from sqlalchemy import DateTime, Integer, String, Text, and_, event, exists, func, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, aliased, mapped_column

from sagaflow import tracing
from sagaflow._errors import error_text
from sagaflow._outage import OutageReporter

if TYPE_CHECKING:
    from sagaflow._db import DatabaseHandle

log = logging.getLogger("sagaflow.outbox")


def utcnow() -> datetime:
    return datetime.now(UTC)


def outbox_table(base: type[DeclarativeBase]) -> type[Any]:
    """The outbox table in one service's declarative base (its own database)."""

    # The base is the owner's, known only at run time: mypy cannot check a class built on
    # a variable, so it is taken as it is.
    class OutboxMessage(base):  # type: ignore[misc,valid-type]
        __tablename__ = "sagaflow_outbox"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        key: Mapped[str] = mapped_column(String(80), index=True)  # per-key order: a saga id
        kind: Mapped[str] = mapped_column(String(20))
        payload: Mapped[str] = mapped_column(Text)
        created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
        attempts: Mapped[int] = mapped_column(Integer, default=0)
        next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
        claimed_by: Mapped[str | None] = mapped_column(String(120), nullable=True)
        claimed_until: Mapped[datetime | None] = mapped_column(
            DateTime(timezone=True), nullable=True
        )
        sent_at: Mapped[datetime | None] = mapped_column(
            DateTime(timezone=True), nullable=True, index=True
        )
        parked: Mapped[int] = mapped_column(Integer, default=0)
        last_error: Mapped[str | None] = mapped_column(Text, nullable=True)

    return OutboxMessage


def enqueue(
    session: Session,
    table: type[Any],
    key: str,
    kind: str,
    payload: dict[str, Any],
    held_by: Outbox | None = None,
) -> int:
    """Write a message in the caller's transaction; returns its row id. `held_by` (an
    Outbox) keeps the relays off it for a lease: its writer sends it after the commit.
    Inside saga work (`AfterCommit.collect`), a row of an outbox the process serves is
    held too, and sent by the work once this transaction commits."""
    collecting = _collecting.get() if held_by is None else None
    if collecting is not None:
        held_by = collecting.outbox_for(table)
    trace = tracing.carrier()
    if trace:
        # Whoever sends the row (this process, or a relay after a crash) joins this trace.
        payload = {**payload, tracing.TRACE_KEY: trace}
    row = table(key=key, kind=kind, payload=json.dumps(payload), attempts=0, parked=0)
    if held_by is not None:
        row.claimed_by = held_by.me
        row.claimed_until = utcnow() + timedelta(seconds=held_by.lease)
    session.add(row)
    session.flush()
    if collecting is not None and held_by is not None:
        collecting.written(session, Held(held_by, row.id, kind, payload))
    row_id: int = row.id
    return row_id


def message_id(service: str, row_id: int) -> str:
    return f"outbox-{service}-{row_id}"


class Outbox:
    """One service's outbox: claiming and marking its rows."""

    def __init__(
        self, service: str, db: DatabaseHandle, table: type[Any], lease_seconds: float = 30.0
    ) -> None:
        self.service, self.db, self.table = service, db, table
        self.lease = lease_seconds
        self.me = f"{socket.gethostname()}:{id(self):x}"

    def claim(self, limit: int = 100, ids: list[int] | None = None) -> list[Any]:
        """Rows due now, the oldest unsent of their key, not claimed by a live relay (nor
        held by their writer)."""
        t, earlier = self.table, aliased(self.table)
        now = utcnow()
        blocked = exists().where(
            and_(
                earlier.key == t.key,
                earlier.id < t.id,
                earlier.sent_at.is_(None),
                earlier.parked == 0,
            )
        )
        query = (
            select(t)
            .where(
                t.sent_at.is_(None),
                t.parked == 0,
                t.next_attempt_at <= now,
                (t.claimed_until.is_(None)) | (t.claimed_until < now),
                ~blocked,
            )
            .order_by(t.id)
            .limit(limit)
        )
        if ids is not None:
            query = query.where(t.id.in_(ids))
        if not self.db.is_sqlite:
            query = query.with_for_update(skip_locked=True, of=t)
        with self.db.write() as session:
            rows = session.scalars(query).all()
            for row in rows:
                row.claimed_by, row.claimed_until = self.me, now + timedelta(seconds=self.lease)
            return [(r.id, r.key, r.kind, json.loads(r.payload), r.attempts) for r in rows]

    def sent(self, row_ids: list[int], payload: dict[str, Any] | None = None) -> None:
        """Mark rows sent (and, with `payload`, say what the one row finally said)."""
        if not row_ids:
            return
        values: dict[str, Any] = dict(sent_at=utcnow(), claimed_by=None, claimed_until=None)
        if payload is not None:
            values["payload"] = json.dumps(payload)
        with self.db.write() as session:
            session.execute(update(self.table).where(self.table.id.in_(row_ids)).values(**values))

    def release(self, row_ids: list[int]) -> None:
        if not row_ids:
            return
        with self.db.write() as session:
            session.execute(
                update(self.table)
                .where(self.table.id.in_(row_ids))
                .values(claimed_by=None, claimed_until=None)
            )

    def unsent(self, key: str, kind: str) -> list[tuple[int, dict[str, Any]]]:
        with self.db.read() as session:
            rows = session.execute(
                select(self.table.id, self.table.payload).where(
                    self.table.key == key,
                    self.table.kind == kind,
                    self.table.sent_at.is_(None),
                    self.table.parked == 0,
                )
            ).all()
            return [(row_id, json.loads(payload)) for row_id, payload in rows]

    def take_over(self, row_id: int, payload: dict[str, Any]) -> bool:
        """Hold an unsent row whoever held it (its writer died, or is slow: then both send
        it, under the one message id its consumer deduplicates)."""
        t = self.table
        with self.db.write() as session:
            # An UPDATE's result is a CursorResult (it has the row count).
            taken = cast(
                CursorResult[Any],
                session.execute(
                    update(t)
                    .where(t.id == row_id, t.sent_at.is_(None))
                    .values(
                        payload=json.dumps(payload),
                        claimed_by=self.me,
                        claimed_until=utcnow() + timedelta(seconds=self.lease),
                    )
                ),
            )
            return taken.rowcount == 1

    def withdraw(self, row_ids: list[int], why: str) -> None:
        """Close rows without sending them (what they announce must not happen)."""
        with self.db.write() as session:
            session.execute(
                update(self.table)
                .where(self.table.id.in_(row_ids))
                .values(
                    sent_at=utcnow(),
                    claimed_by=None,
                    claimed_until=None,
                    last_error=f"withdrawn: {why}"[:2000],
                )
            )

    def unsent_keys(self) -> set[str]:
        with self.db.read() as session:
            return set(
                session.scalars(
                    select(self.table.key).where(
                        self.table.sent_at.is_(None), self.table.parked == 0
                    )
                )
            )

    def failed(
        self,
        row_id: int,
        error: str,
        delay: float,
        park: bool,
        payload: dict[str, Any] | None = None,
    ) -> None:
        with self.db.write() as session:
            row = session.get(self.table, row_id)
            assert row is not None  # a row this process claimed or holds is never deleted
            if payload is not None:
                row.payload = json.dumps(payload)
            row.attempts += 1
            row.last_error = error[:2000]
            row.claimed_by = row.claimed_until = None
            row.next_attempt_at = utcnow() + timedelta(seconds=delay)
            row.parked = 1 if park else 0

    def pending(self) -> int:
        with self.db.read() as session:
            count = session.scalar(
                select(func.count()).where(self.table.sent_at.is_(None), self.table.parked == 0)
            )
            return count or 0  # COUNT(*) always returns a row


Sender = Callable[[str, dict[str, Any], str], None]  # (kind, payload, message id)


class Wakeup:
    """How a writer tells the relay that a row is waiting for it, through Redis: the writer
    sends its own rows right after its commit (the fast path), so the relay has work only
    when that failed, and need not look at every database several times a second to find
    out. `wait` blocks on a Redis list in one-second slices (so a stop is noticed) and says
    whether it was woken. Best effort both ways: with Redis down a nudge is lost, and the
    relay's idle poll finds the row anyway."""

    KEY = "sagaflow:outbox:wakeup"

    def __init__(self, redis: Redis, key: str = KEY) -> None:
        self.redis, self.key = redis, key

    def nudge(self) -> None:
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.lpush(self.key, 1)
            pipe.ltrim(self.key, 0, 0)  # one pending nudge is as good as many
            pipe.execute()
        except Exception as exc:  # Redis down: the idle poll covers it
            log.debug("could not nudge the relay: %s", error_text(exc))

    def wait(self, seconds: float, stop: threading.Event) -> bool:
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.redis.blpop([self.key], timeout=min(1.0, max(0.01, left))):
                return True
        return False


class Relay:
    """Sends the rows of the outboxes it serves; `run` is the relay process's loop.

    It looks again after `poll` while it has work (rows waiting for a retry), and otherwise
    only when a writer nudges it (`wakeup`) or every `idle_poll`: idle, it costs a Redis
    wait, not a query per outbox several times a second."""

    def __init__(
        self,
        outboxes: list[Outbox],
        send: Sender,
        park: Callable[[Outbox, tuple[Any, ...], str], object],
        max_attempts: int = 10,
        backoff: Callable[[int], float] = lambda n: min(60.0, 0.5 * 2**n),
        poll: float = 0.2,
        wakeup: Wakeup | None = None,
        idle_poll: float | None = None,
    ) -> None:
        self.outboxes, self.send, self.park = outboxes, send, park
        self.max_attempts, self.backoff, self.poll = max_attempts, backoff, poll
        self.wakeup = wakeup
        # Without a wakeup, nothing tells the relay that a row waits: poll as before.
        self.idle_poll = idle_poll if (wakeup and idle_poll) else poll
        self._owed = False  # the last pass left rows to retry

    def relay(self, outbox: Outbox, rows: list[Any]) -> int:
        done: list[int] = []
        failed_keys: set[str] = set()
        held: list[int] = []
        for row in rows:
            row_id, key, kind, payload, attempts = row
            if key in failed_keys:
                held.append(row_id)  # keep this key's order: it waits for the next pass
                continue
            try:
                self._send(kind, payload, message_id(outbox.service, row_id))
            except Exception as exc:
                failed_keys.add(key)
                self._failed(outbox, row, exc)
                continue
            done.append(row_id)
        outbox.sent(done)
        outbox.release(held)
        return len(done)

    def _send(self, kind: str, payload: dict[str, Any], mid: str) -> None:
        with tracing.continued(payload.get(tracing.TRACE_KEY), f"outbox.send {kind}", message=mid):
            self.send(kind, payload, mid)

    def send_held(
        self, outbox: Outbox, row_id: int, kind: str, payload: dict[str, Any], changed: bool = True
    ) -> bool:
        """Send a row its writer holds (`enqueue(held_by=...)`), with what it finally says
        if that `changed` since it was written, then mark it so in one update: no claim
        (the hold is the claim), one transaction after the writer's own. A failed send
        leaves it to the relays."""
        kept = payload if changed else None
        try:
            self._send(kind, payload, message_id(outbox.service, row_id))
        except Exception as exc:
            key = payload.get("saga_id", "")
            self._failed(outbox, (row_id, key, kind, payload, 0), exc, kept)
            if self.wakeup:
                self.wakeup.nudge()
            return False
        outbox.sent([row_id], kept)
        return True

    def _failed(
        self,
        outbox: Outbox,
        row: tuple[Any, ...],
        exc: Exception,
        payload: dict[str, Any] | None = None,
    ) -> None:
        """A send failed: try again later, or park the message once attempts run out."""
        row_id, key, _kind, _payload, attempts = row
        give_up = attempts + 1 >= self.max_attempts
        error = error_text(exc)
        log.warning(
            "outbox send failed service=%s id=%s key=%s attempt=%s error=%r",
            outbox.service,
            row_id,
            key,
            attempts + 1,
            error,
        )
        outbox.failed(row_id, error, self.backoff(attempts), park=give_up, payload=payload)
        if give_up:
            self.park(outbox, row, error)
        else:
            self._owed = True  # due again after its backoff: keep looking often

    def run_once(self) -> int:
        sent, self._owed = 0, False
        for outbox in self.outboxes:
            sent += self.relay(outbox, outbox.claim())
        return sent

    def run(self, stop: threading.Event) -> None:
        log.info("outbox relay started: %s", ", ".join(o.service for o in self.outboxes))
        outage = OutageReporter(log)  # a database or the broker down: said once, not per try
        while not stop.is_set():
            try:
                busy = self.run_once()
                outage.ok()
            except Exception as exc:
                outage.failed(exc)
                busy, self._owed = 0, True
            if busy:
                continue
            if self._owed or outage.down or self.wakeup is None:
                stop.wait(self.poll)
                continue
            try:
                self.wakeup.wait(self.idle_poll, stop)
            except Exception as exc:  # Redis down while waiting: look often until it is back
                outage.failed(exc)
                stop.wait(self.poll)
        log.info("outbox relay stopped")


@dataclass(frozen=True)
class Held:
    """A row its writer holds, to send once its transaction has committed."""

    outbox: Outbox
    row_id: int
    kind: str
    payload: dict[str, Any]


class _Collected:
    def __init__(self, by_table: dict[type[Any], Outbox]) -> None:
        self._by_table = by_table
        self.rows: list[Held] = []

    def outbox_for(self, table: type[Any]) -> Outbox | None:
        return self._by_table.get(table)

    def written(self, session: Session, held: Held) -> None:
        # Only once it commits: a row its transaction rolled back does not exist, and
        # sending it would announce a change that never happened.
        event.listen(session, "after_commit", lambda _session: self.rows.append(held), once=True)


_collecting: ContextVar[_Collected | None] = ContextVar("sagaflow_after_commit", default=None)


class AfterCommit:
    """The outbox rows a piece of saga work writes, sent by the work itself right after
    it succeeded (held from their insert, so no relay takes them meanwhile): the relay
    does not have to find them, and their consumers do not wait for its next look. A row
    the work could not send (the broker down, the process killed before it sent) is the
    relay's once its hold expires or the failed send nudges it.

    Per-key order holds as for the relays: the saga's earlier messages caused this work,
    so they have left already."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self._by_table = {outbox.table: outbox for outbox in relay.outboxes}

    @contextmanager
    def collect(self) -> Iterator[list[Held]]:
        collected = _Collected(self._by_table)
        token = _collecting.set(collected)
        try:
            yield collected.rows
        finally:
            _collecting.reset(token)

    def send(self, rows: list[Held]) -> None:
        for held in rows:
            try:
                self.relay.send_held(
                    held.outbox, held.row_id, held.kind, held.payload, changed=False
                )
            except Exception as exc:  # marking it failed: the hold expires, a relay sends it
                log.warning(
                    "outbox row left to the relay service=%s id=%s error=%r",
                    held.outbox.service,
                    held.row_id,
                    error_text(exc),
                )


# --- what a message is: the runtime's two kinds ----------------------------------------

START, STREAM = "start", "stream"


def start_message(
    workflow: str, ctx: dict[str, Any], version: str = ""
) -> tuple[str, dict[str, Any]]:
    """Start a saga: its chain is sent when the row is, by the plan of `version` (the one
    its log row records)."""
    payload: dict[str, Any] = {"workflow": workflow, "ctx": ctx}
    if version:
        payload["version"] = version
    return START, payload


def stream_message(stream: str, fields: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """Append an entry to a Redis stream (a service's published event)."""
    return STREAM, {"stream": stream, "fields": fields}
