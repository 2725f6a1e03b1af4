"""What workers say happened, and the fence that stops a saga that turned back.

Workers never write the saga log themselves (it lives in the home service's database,
which a products worker cannot reach). Each piece of work appends events to one Redis
stream; the orchestrator (sagaflow/_projector.py) reads them in order and keeps the log.
An append costs one Redis round trip and no Celery hop, so recording progress does not
slow the chain.

Redis also holds two small flags every worker can read:
- the fence `sagaflow:fence:<saga>`: set once, when the saga turns back (a business error,
  an operator giving up); a forward step checks it before and after applying, so nothing
  moves forward once the saga is being undone;
- the failure marker `sagaflow:failure:<saga>:<work>`: how a task's own handler ended
  (business error, or parked in the DLQ), which its link_error callback reads to route it;
- a running step's input `sagaflow:input:<saga>:<step>`, kept until it succeeds, so that
  work parked by its callback (its task was killed) can be sent again;
- the done marker `sagaflow:done:<saga>:<work>`, set when the work succeeds: a failure
  reported afterwards (the late callback of a killed attempt) is stale, and must neither
  park the work again nor page anyone.

Each is written with a fixed expiry; once its saga is final (COMPLETED or FAILED, nothing
owed), the projector shortens them all to a grace period (`KeyExpiry`, KEYS_GRACE_SECONDS).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from redis import Redis
from redis.exceptions import NoScriptError
from redis.typing import EncodableT, FieldT

from sagaflow.dlq.store import DUE, ENTRY, entry_id

STREAM = "sagaflow:events"


@dataclass(frozen=True)
class RedisKeys:
    """The keys through which one home's saga log is kept: the progress reports' stream,
    its consumer group, and the lock that lets one projector at a time apply them. Named
    after the home (`RedisKeys.of_home`), so the workflows of two homes on one Redis never
    share a stream or fight over a lock; the workflows of one home share its saga log, so
    they share these too. The defaults are the names before they were per home."""

    stream: str = STREAM
    group: str = "sagaflow-projector"
    lock: str = "sagaflow:projector:lock"

    @classmethod
    def of_home(cls, home: str) -> RedisKeys:
        return cls(f"sagaflow:{home}:events", f"sagaflow-projector:{home}", f"sagaflow:{home}:lock")


FENCE, FAILURE, INPUT = "sagaflow:fence:", "sagaflow:failure:", "sagaflow:input:"
DONE = "sagaflow:done:"
# One hash per saga: message id -> the task it was first delivered as (EventLog.first_delivery).
DELIVERIES = "sagaflow:deliveries:"
MARKER_TTL = 7 * 86_400
INPUT_TTL = 2 * 86_400
FENCE_TTL = 30 * 86_400
# How long a saga's keys outlive it once it is final (COMPLETED or FAILED with nothing owed,
# running or parked; SAGA_KEYS_GRACE_SECONDS). What can still arrive for a final saga is
# late: the link_error callback of an attempt whose worker was killed (sent when its pool
# noticed, seconds later, but queued behind whatever its queue holds), or a message held by
# a SIGKILLed worker, redelivered after the broker's visibility timeout (120 s) plus its
# restore interval and run for up to the hard time limit. The done marker must still be
# there for them (the report is stale: it parks nothing and pages nobody), and so must the
# fence (the redelivered step is refused before it touches anything). An hour is more than
# ten times the slowest of these paths; past it, a forward step of a turned-back saga is
# still refused by its service's ledger (the compensation voided it), only later.
KEYS_GRACE_SECONDS = 3_600


def saga_keys(saga_id: str, names: Iterable[str]) -> list[str]:
    """The keys the workers may have left for one saga: its fence, its deliveries, and the
    failure marker, kept input and done marker of each named step or compensation."""
    work = [f"{saga_id}:{name}" for name in names]
    return [
        FENCE + saga_id,
        DELIVERIES + saga_id,
        *(prefix + w for w in work for prefix in (FAILURE, INPUT, DONE)),
    ]


# Shorten each key's expiry to ARGV[1] milliseconds, never lengthen it: a key without an
# expiry gets one, a missing key is left missing. (EXPIRE ... LT says the same from Redis 7
# on; this works on any Redis, and on the in-memory one of the tests.)
_SHORTEN = """
local ms = tonumber(ARGV[1])
local shortened = 0
for _, key in ipairs(KEYS) do
  local left = redis.call('PTTL', key)
  if left == -1 or left > ms then
    redis.call('PEXPIRE', key, ms)
    shortened = shortened + 1
  end
end
return shortened
"""


class KeyExpiry:
    """Shortens the expiry of finished sagas' keys to the grace period, in one round trip
    however many sagas and keys: one script call per CHUNK keys, pipelined, so Redis is
    never held for long by one (about a millisecond for 500 keys; every other client of
    the server, the broker first, waits while a script runs)."""

    CHUNK = 500

    def __init__(self, redis: Redis, grace_seconds: float = KEYS_GRACE_SECONDS) -> None:
        self.redis = redis
        self.grace_ms = max(1, int(grace_seconds * 1000))
        self._script = redis.register_script(_SHORTEN)

    def shorten(self, keys: list[str]) -> int:
        """How many keys got a shorter expiry."""
        if not keys:
            return 0
        chunks = [keys[at : at + self.CHUNK] for at in range(0, len(keys), self.CHUNK)]
        for _ in range(2):
            pipe = self.redis.pipeline(transaction=False)
            for chunk in chunks:
                pipe.evalsha(self._script.sha, len(chunk), *chunk, self.grace_ms)
            replies: list[Any] = pipe.execute(raise_on_error=False)
            if not any(isinstance(reply, NoScriptError) for reply in replies):
                break
            # A Redis that restarted (or never saw it): load it, and run it all again (a
            # key shortened the first time is not touched the second).
            self.redis.script_load(_SHORTEN)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return sum(int(reply) for reply in replies)


class Phase(StrEnum):
    STARTED = "started"
    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"
    RETRYING = "retrying"
    FAILED = "failed"  # a business error
    DEAD_LETTERED = "dead_lettered"
    REFUSED = "refused"
    TURNED_BACK = "turned_back"  # the saga turns back: `compensations` will run


@dataclass
class Event:
    saga_id: str
    workflow: str
    name: str  # the step or compensation ("" for saga-level events)
    phase: Phase
    at: float = field(default_factory=time.time)
    attempt: int = 0
    error: str = ""
    detail: str = ""
    worker: str = ""
    ctx: dict[str, Any] | None = None  # a step's resulting context (succeeded)
    compensations: list[str] = field(default_factory=list)  # turned_back

    def fields(self) -> dict[str, str]:
        data = asdict(self)
        data["phase"] = str(self.phase)
        data["ctx"] = json.dumps(self.ctx) if self.ctx is not None else ""
        data["compensations"] = json.dumps(self.compensations)
        return {k: str(v) for k, v in data.items()}

    @classmethod
    def from_fields(cls, raw: dict[str, Any]) -> Event:
        get = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
        return cls(
            saga_id=get["saga_id"],
            workflow=get["workflow"],
            name=get["name"],
            phase=Phase(get["phase"]),
            at=float(get["at"]),
            attempt=int(get.get("attempt") or 0),
            error=get.get("error", ""),
            detail=get.get("detail", ""),
            worker=get.get("worker", ""),
            ctx=json.loads(get["ctx"]) if get.get("ctx") else None,
            compensations=json.loads(get.get("compensations") or "[]"),
        )


# Append an event, forget how an earlier attempt failed, and read the saga's fence, in one
# round trip.
_EMIT_AND_READ_FENCE = """
redis.call('XADD', KEYS[1], '*', unpack(cjson.decode(ARGV[1])))
if ARGV[2] == '1' then redis.call('DEL', KEYS[3]) end
if ARGV[3] == 'keep' then redis.call('SET', KEYS[4], ARGV[4], 'EX', ARGV[5]) end
if ARGV[3] == 'drop' then redis.call('DEL', KEYS[4]) end
return redis.call('GET', KEYS[2])
"""

# The work succeeded: append the event, drop its kept input, close its DLQ entry unless an
# operator gave it up meanwhile (the dlq/store.py layout), and read the fence, in one
# round trip: this runs at the end of every step.
_FINISH = """
redis.call('XADD', KEYS[1], '*', unpack(cjson.decode(ARGV[1])))
redis.call('DEL', KEYS[3])
redis.call('SET', KEYS[6], '1', 'EX', ARGV[5])
local closed = 'none'
if redis.call('HGET', KEYS[4], 'given_up') == '1' then
  closed = 'given_up'
else
  local status = redis.call('HGET', KEYS[4], 'status')
  if status and status ~= 'resolved' then
    redis.call('HSET', KEYS[4], 'status', 'resolved', 'note', ARGV[2], 'resolved_at', ARGV[3])
    redis.call('ZREM', KEYS[5], ARGV[4])
    closed = 'resolved'
  end
end
return {redis.call('GET', KEYS[2]) or '', closed}
"""

# Set the fence once; the caller that set it is the one that dispatches the compensations.
_TURN_BACK = """
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'EX', ARGV[3]) then
  redis.call('XADD', KEYS[1], '*', unpack(cjson.decode(ARGV[1])))
  return 1
end
return 0
"""


# Record the first delivery of message ARGV[1] as task ARGV[2] in the saga's hash: 1 if
# this is it (or the same task again), 0 for a duplicate. A new hash gets ARGV[3] seconds;
# one whose expiry the projector shortened (the saga is final) keeps it.
_FIRST_DELIVERY = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  if redis.call('TTL', KEYS[1]) == -1 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
  return 1
end
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return 1 end
return 0
"""


class EventLog:
    def __init__(self, redis: Redis, stream: str = STREAM) -> None:
        self.redis, self.stream = redis, stream
        self._emit_and_read = redis.register_script(_EMIT_AND_READ_FENCE)
        self._first_delivery = redis.register_script(_FIRST_DELIVERY)
        self._turn_back = redis.register_script(_TURN_BACK)
        self._finish = redis.register_script(_FINISH)

    @staticmethod
    def _flat(event: Event) -> str:
        return json.dumps([x for pair in event.fields().items() for x in pair])

    def emit(self, event: Event) -> None:
        # redis types a stream entry's fields as a dict of its own key and value types.
        fields: dict[FieldT, EncodableT] = {k: v for k, v in event.fields().items()}
        self.redis.xadd(self.stream, fields)

    def emit_and_read_fence(
        self,
        event: Event,
        new_attempt: bool = False,
        keep_input: dict[str, Any] | None = None,
        drop_input: bool = False,
    ) -> str | None:
        """Append the event; the saga's fence (why it turned back), or None. A new attempt
        also clears the failure marker an earlier attempt left; `keep_input` keeps a step's
        input until `drop_input` (it succeeded)."""
        work = f"{event.saga_id}:{event.name}"
        inputs = "keep" if keep_input is not None else ("drop" if drop_input else "")
        found = self._emit_and_read(
            keys=[self.stream, FENCE + event.saga_id, FAILURE + work, INPUT + work],
            args=[
                self._flat(event),
                "1" if new_attempt else "0",
                inputs,
                json.dumps(keep_input) if keep_input is not None else "",
                INPUT_TTL,
            ],
        )
        return found.decode() if isinstance(found, bytes) else found

    def finish(self, event: Event, note: str) -> tuple[str | None, str]:
        """Record that the work succeeded; returns (the fence or None, what became of its
        DLQ entry: "resolved", "none", or "given_up" by an operator meanwhile)."""
        eid = entry_id(event.saga_id, event.name)
        fence, closed = self._finish(
            keys=[
                self.stream,
                FENCE + event.saga_id,
                f"{INPUT}{event.saga_id}:{event.name}",
                ENTRY + eid,
                DUE,
                f"{DONE}{event.saga_id}:{event.name}",
            ],
            args=[self._flat(event), note, time.time(), eid, MARKER_TTL],
        )
        fence = fence.decode() if isinstance(fence, bytes) else fence
        closed = closed.decode() if isinstance(closed, bytes) else closed
        return fence or None, closed

    def turn_back(self, event: Event, reason: str) -> bool:
        """Fence the saga and record that it turns back; False if it already had."""
        return bool(
            self._turn_back(
                keys=[self.stream, FENCE + event.saga_id],
                args=[self._flat(event), reason[:500] or "turned back", FENCE_TTL],
            )
        )

    def fence(self, saga_id: str) -> str | None:
        found = self.redis.get(FENCE + saga_id)
        return found.decode() if isinstance(found, bytes) else found

    # --- failure markers, read by the link_error callback ---------------------------

    def mark_failure(self, saga_id: str, name: str, how: str) -> None:
        self.redis.set(f"{FAILURE}{saga_id}:{name}", how, ex=MARKER_TTL)

    def failure(self, saga_id: str, name: str) -> str | None:
        found = self.redis.get(f"{FAILURE}{saga_id}:{name}")
        return found.decode() if isinstance(found, bytes) else found

    def succeeded(self, saga_id: str, name: str) -> bool:
        """The work has succeeded (by any path): a failure reported for it now is stale."""
        return bool(self.redis.exists(f"{DONE}{saga_id}:{name}"))

    def first_delivery(self, saga_id: str, message_id: str, task_id: str) -> bool:
        """False when a message with this id was already delivered as another task: a
        duplicate send. The same task delivered again (a redelivery) is not a duplicate.
        Kept in the saga's own hash, so that it expires with the saga's other keys once
        the saga is final (KeyExpiry), not a week after each message."""
        first = self._first_delivery(
            keys=[DELIVERIES + saga_id], args=[message_id, task_id, MARKER_TTL]
        )
        return bool(first)

    def input(self, saga_id: str, name: str) -> dict[str, Any] | None:
        found = self.redis.get(f"{INPUT}{saga_id}:{name}")
        return json.loads(found) if found else None
