"""A durable Redis-backed store of stuck saga work, one entry per (saga, step).

Layout (all keys under `dlq:`):
- `dlq:entry:<id>`  hash: the entry (id is "<saga_id>:<name>", so the same piece of work
  is never in the DLQ twice: a second hand-off updates the first entry);
- `dlq:ids`         sorted set of every entry by first failure time, for listing;
- `dlq:due`         sorted set of entries the worker must act on, by when.

Why a sorted set and not a stream: retries need delays, and a worker takes an entry by
pushing its due time forward by a lease, atomically. A worker killed mid-retry loses
nothing: when the lease runs out the entry is due again. Entries survive a Redis restart
when Redis persists (the Redis that `make run` starts uses appendonly yes).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, cast

from redis import Redis

RETRYING, NEEDS_HUMAN, RESOLVED = "retrying", "needs_human", "resolved"
STATUSES = (RETRYING, NEEDS_HUMAN, RESOLVED)

ENTRY, IDS, DUE = "dlq:entry:", "dlq:ids", "dlq:due"
ALERTED = "dlq:alerted:"  # what an entry's last alert said, so an incident pages once
ALERT_MEMORY = 7 * 86_400
DONE = "sagaflow:done:"  # sagaflow/_events.py: the work succeeded

# Create the entry, or fold a repeated hand-off of the same work into it; nothing when the
# work has succeeded meanwhile (a late report of an attempt that was overtaken).
_PUSH = """
local key = KEYS[1]
local now = ARGV[1]
if redis.call('EXISTS', KEYS[4]) == 1 then return 2 end
local status = redis.call('HGET', key, 'status')
if status and status ~= 'resolved' then
  redis.call('HSET', key, 'error_class', ARGV[3], 'error', ARGV[4], 'traceback', ARGV[5],
             'last_failed_at', now)
  redis.call('HINCRBY', key, 'handoffs', 1)
  return 0
end
redis.call('DEL', key)
redis.call('HSET', key, unpack(cjson.decode(ARGV[6])))
redis.call('ZADD', KEYS[2], now, ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[2])
return 1
"""

# Take the earliest due entry and push its due time forward by the lease; drop from the
# schedule, in the same step, an entry that needs nothing more (resolved, or alerted).
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)
if #ids == 0 then return nil end
local key = ARGV[3] .. ids[1]
local status = redis.call('HGET', key, 'status')
if (not status) or status == 'resolved' or
   (status == 'needs_human' and redis.call('HGET', key, 'alerted') == '1') then
  redis.call('ZREM', KEYS[1], ids[1])
  return {ids[1], 0}
end
redis.call('ZADD', KEYS[1], ARGV[2], ids[1])
return {ids[1], 1}
"""

# An operator gives the work up (and compensates) only if it has not succeeded meanwhile;
# the work, if a retry of it is still running, then finds the entry given up.
_GIVE_UP = """
local status = redis.call('HGET', KEYS[1], 'status')
if (not status) or status == 'resolved' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'resolved', 'given_up', '1', 'note', ARGV[1],
           'resolved_at', ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[3])
return 1
"""

# The work succeeded: close its entry, unless an operator gave it up first ("given_up").
_SUCCEEDED = """
if redis.call('HGET', KEYS[1], 'given_up') == '1' then return 'given_up' end
local status = redis.call('HGET', KEYS[1], 'status')
if (not status) or status == 'resolved' then return 'none' end
redis.call('HSET', KEYS[1], 'status', 'resolved', 'note', ARGV[1], 'resolved_at', ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[3])
return 'resolved'
"""

# Delete an entry only if it is still resolved: it may have been handed off again.
_PURGE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'resolved' then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""


def entry_id(saga_id: str, name: str) -> str:
    return f"{saga_id}:{name}"


def supply_input(redis: Redis, eid: str, ctx: dict[str, Any]) -> bool:
    """Give a parked forward step the input it was parked without (from the saga log)."""
    raw = redis.hget(ENTRY + eid, "args")
    if not raw:
        return False
    args = json.loads(raw)
    if args.get("ctx") is not None or "then" not in args or "outbox" in args:
        return False
    redis.hset(ENTRY + eid, "args", json.dumps({**args, "ctx": ctx}))
    return True


def _decode(raw: Mapping[Any, Any]) -> dict[str, Any]:
    entry = {
        k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
        for k, v in raw.items()
    }
    for field in ("attempts", "handoffs"):
        if field in entry:
            entry[field] = int(entry[field])
    for field in ("first_failed_at", "last_failed_at", "next_attempt_at", "resolved_at"):
        if entry.get(field):
            entry[field] = float(entry[field])
    entry["alerted"] = entry.get("alerted") == "1"
    entry["given_up"] = entry.get("given_up") == "1"
    entry["args"] = json.loads(entry.get("args") or "{}")
    return entry


class DeadLetterStore:
    def __init__(
        self,
        redis: Redis,
        backoff: Callable[[int], float],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.backoff = backoff  # attempts so far -> seconds until the next try
        self.clock = clock
        self._push = redis.register_script(_PUSH)
        self._claim = redis.register_script(_CLAIM)
        self._purge = redis.register_script(_PURGE)
        self._give_up = redis.register_script(_GIVE_UP)
        self._succeeded = redis.register_script(_SUCCEEDED)

    def push(
        self,
        *,
        saga_id: str,
        workflow: str,
        name: str,
        kind: str,
        task: str,
        args: dict[str, Any],
        error_class: str,
        error: str,
        traceback: str,
        dependency: str = "",
        traceparent: str = "",
        version: str = "",
    ) -> dict[str, Any] | None:
        """Hand stuck work to the DLQ; the first retry comes after one backoff. None when
        the work has succeeded meanwhile: there is nothing to park. `dependency`: what
        could not be reached, when that is why it failed; `traceparent`: the trace of the
        work that failed (its retries join it); `version`: the version of the workflow its
        saga started on (its retry runs by that plan; "": the current one)."""
        now = self.clock()
        eid = entry_id(saga_id, name)
        fields: dict[str, Any] = {
            "id": eid,
            "saga_id": saga_id,
            "workflow": workflow,
            "name": name,
            "kind": kind,
            "task": task,
            "args": json.dumps(args),
            "error_class": error_class,
            "error": error,
            "traceback": traceback,
            "attempts": 0,
            "handoffs": 1,
            "status": RETRYING,
            "first_failed_at": now,
            "last_failed_at": now,
            "next_attempt_at": now + self.backoff(0),
            "alerted": 0,
            "note": "",
            "dependency": dependency,
            "traceparent": traceparent,
            "version": version,
        }
        flat = [str(x) for pair in fields.items() for x in pair]
        pushed = self._push(
            keys=[ENTRY + eid, IDS, DUE, f"{DONE}{eid}"],
            args=[
                now,
                eid,
                error_class,
                error,
                traceback,
                json.dumps(flat),
                fields["next_attempt_at"],
            ],
        )
        return None if int(pushed) == 2 else self.get(eid)

    def get(self, eid: str) -> dict[str, Any] | None:
        raw = self.redis.hgetall(ENTRY + eid)
        return _decode(raw) if raw else None

    def entries(
        self, status: str | None = None, name: str | None = None, saga_id: str | None = None
    ) -> list[dict[str, Any]]:
        # Without scores, ZRANGE answers the members alone.
        members = cast(list[bytes | str], self.redis.zrange(IDS, 0, -1))
        ids = [i.decode() if isinstance(i, bytes) else i for i in members]
        pipe = self.redis.pipeline(transaction=False)
        for eid in ids:
            pipe.hgetall(ENTRY + eid)
        found = [_decode(raw) for raw in pipe.execute() if raw]
        return [
            e
            for e in found
            if (status is None or e["status"] == status)
            and (name is None or e["name"] == name)
            and (saga_id is None or e["saga_id"] == saga_id)
        ]

    def claim(self, lease_seconds: float) -> dict[str, Any] | Literal[False] | None:
        """Take the next due entry for `lease_seconds`. None when nothing is due; False
        when the due entry needed nothing more (it left the schedule)."""
        now = self.clock()
        found = self._claim(keys=[DUE], args=[now, now + lease_seconds, ENTRY])
        if found is None:
            return None
        eid, live = found
        if not live:
            return False
        return self.get(eid.decode() if isinstance(eid, bytes) else eid)

    def update(self, eid: str, **fields: Any) -> None:
        encoded = {k: (int(v) if isinstance(v, bool) else v) for k, v in fields.items()}
        self.redis.hset(ENTRY + eid, mapping={k: str(v) for k, v in encoded.items()})

    def alerted_before(self, eid: str, fingerprint: str) -> bool:
        """An alert with this fingerprint went out for this entry already: an incident that
        only repeats (the same work, the same error) pages once."""
        found = self.redis.get(ALERTED + eid)
        return (found.decode() if isinstance(found, bytes) else found) == fingerprint

    def remember_alert(self, eid: str, fingerprint: str) -> None:
        self.redis.set(ALERTED + eid, fingerprint, ex=ALERT_MEMORY)

    def refund_attempt(self, eid: str) -> None:
        """The attempt failed on an unreachable dependency: it does not count."""
        self.redis.hincrby(ENTRY + eid, "attempts", -1)

    def start_attempt(self, eid: str) -> int:
        """Count an attempt before running it, so a crash mid-attempt still counts."""
        return int(self.redis.hincrby(ENTRY + eid, "attempts", 1))

    def schedule(self, eid: str, when: float) -> None:
        self.update(eid, next_attempt_at=when)
        self.redis.zadd(DUE, {eid: when})

    def unschedule(self, eid: str) -> None:
        self.redis.zrem(DUE, eid)

    def attempt_failed(
        self,
        eid: str,
        error_class: str,
        error: str,
        give_up: bool,
        alert_after: float = 0.0,
        alerted: bool = False,
        dependency: str = "",
    ) -> None:
        """Record a failed attempt: schedule the next, or hand the entry to a human (its
        alert due after `alert_after` seconds: the caller usually sends it at once)."""
        fields = {
            "error_class": error_class,
            "error": error,
            "last_failed_at": self.clock(),
            "dependency": dependency,
        }
        if give_up:
            self.update(eid, status=NEEDS_HUMAN, alerted=alerted, **fields)
            if alerted:
                self.unschedule(eid)
            else:
                self.schedule(eid, self.clock() + alert_after)
        else:
            entry = self.get(eid)
            assert entry is not None, eid  # attempt_failed is told of an entry it holds
            attempts = entry["attempts"]
            # Back to retrying: a retry whose work succeeded but whose continuation could
            # not be sent had already closed the entry.
            self.update(eid, status=RETRYING, **fields)
            self.schedule(eid, self.clock() + self.backoff(attempts))

    def resolve(self, eid: str, note: str) -> bool:
        if not self.redis.exists(ENTRY + eid):
            return False
        self.update(eid, status=RESOLVED, note=note, resolved_at=self.clock())
        self.unschedule(eid)
        return True

    def work_succeeded(self, saga_id: str, name: str, note: str) -> str:
        """The work succeeded, by whatever path: close its entry. Returns "resolved",
        "none" (no open entry) or "given_up" (an operator gave it up meanwhile: the work
        must be undone, not carried forward)."""
        eid = entry_id(saga_id, name)
        found = self._succeeded(keys=[ENTRY + eid, DUE], args=[note, self.clock(), eid])
        return found.decode() if isinstance(found, bytes) else found

    def give_up(self, eid: str, note: str) -> bool:
        """Close an entry that is not resolved, as given up; False if it was resolved (the
        work may have succeeded meanwhile)."""
        return bool(self._give_up(keys=[ENTRY + eid, DUE], args=[note, self.clock(), eid]))

    def expire_resolved(self, retention_seconds: float) -> int:
        """Delete entries resolved more than `retention_seconds` ago (never one that is
        not resolved: a hand-off may have reopened it); how many went."""
        cutoff = self.clock() - retention_seconds
        old = [
            e["id"]
            for e in self.entries(status=RESOLVED)
            if (e.get("resolved_at") or e.get("last_failed_at") or 0) < cutoff
        ]
        return self.purge(old)

    def purge(self, ids: Iterable[str]) -> int:
        """Delete these entries if they are still resolved; returns how many went."""
        return sum(int(self._purge(keys=[ENTRY + eid, IDS, DUE], args=[eid])) for eid in ids)
