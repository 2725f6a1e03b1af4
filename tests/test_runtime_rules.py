"""The saga runtime's rules, in-process and in seconds: a real SQLite database and a real
Redis, a synchronous dispatcher instead of Celery (sagaflow/testing.py). The workflow is a
tiny one of the tests' own, "top up and notify", which knows nothing of orders: it proves
the runtime is not shaped around the shop.

What the end-to-end tests keep: delivery, redelivery after a crash, time limits."""

from __future__ import annotations

import itertools

import pytest
from pydantic import BaseModel
from sqlalchemy import Integer, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sagaflow import (
    Compensation,
    EventLog,
    Hooks,
    Projector,
    RetryPolicy,
    Runner,
    SagaLog,
    SagaStatus,
    Step,
    TransientError,
    Workflow,
    apply_once,
    compensate_once,
    ledger_table,
)
from sagaflow._choreography import CHOREOGRAPHY, MODES, Choreography
from sagaflow._db import Database
from sagaflow._faults import NO_FAULTS, FaultInjector, parse_faults
from sagaflow._log import SagaBase
from sagaflow._orchestrator import StallCheck
from sagaflow._outbox import Outbox, Relay, outbox_table
from sagaflow._sending import sender
from sagaflow.dlq.store import DeadLetterStore
from sagaflow.testing import SyncDispatcher

# The rules layer: in-process, no subprocess (`make test-fast`).
pytestmark = pytest.mark.rules

# --- the tests' own little world: a wallet service and a notifier ----------------------


class WalletBase(DeclarativeBase):
    pass


class Wallet(WalletBase):
    __tablename__ = "wallets"
    user_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    balance: Mapped[int] = mapped_column(Integer, default=0)


class Sent(WalletBase):
    __tablename__ = "sent"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    saga_id: Mapped[str] = mapped_column(String(80), unique=True)


WalletLedger = ledger_table(WalletBase)
WalletOutbox = outbox_table(WalletBase)


class TooMuch(Exception):
    """A business refusal: top-ups are capped."""


class TopUp(BaseModel):
    topup_id: int
    user_id: int
    amount: int


def credit(deps, ctx: TopUp):
    def apply(session):
        if ctx.amount > 1_000:
            raise TooMuch(f"{ctx.amount} is over the cap")
        wallet = session.get(Wallet, ctx.user_id) or Wallet(user_id=ctx.user_id, balance=0)
        session.add(wallet)
        wallet.balance += ctx.amount
        return {"user_id": ctx.user_id, "amount": ctx.amount}

    apply_once(deps.db, WalletLedger, f"topup-{ctx.topup_id}", "credit", apply)
    return ctx, f"credited {ctx.amount}"


def debit(deps, saga_id: str) -> str:
    def undo(session, applied):
        session.get(Wallet, applied["user_id"]).balance -= applied["amount"]

    return compensate_once(deps.db, WalletLedger, saga_id, "credit", undo)


def notify(deps, ctx: TopUp):
    with deps.db.write() as session:
        if session.scalar(select(Sent).where(Sent.saga_id == f"topup-{ctx.topup_id}")) is None:
            session.add(Sent(saga_id=f"topup-{ctx.topup_id}"))
    return ctx, "notified"


TOPUP = Workflow(
    name="topup",
    context=TopUp,
    key=lambda ctx: ctx.topup_id,
    home="wallet",
    steps=[
        Step("credit", "wallet", credit, Compensation("debit", debit)),
        Step("notify", "notifier", notify, retry=RetryPolicy(max_retries=2)),
    ],
    business_errors=(TooMuch,),
    retryable=(TransientError,),
)


class World:
    """The wallet database (which also holds the saga log), Redis, the runner and the
    orchestrator's projector, wired the way a process would wire them."""

    def __init__(self, tmp_path, redis, faults: str = "", mode: str = "orchestration"):
        url = f"sqlite:///{tmp_path / 'wallet.db'}"
        self.db = Database(url, create=True)
        WalletBase.metadata.create_all(self.db.engine)
        SagaBase.metadata.create_all(self.db.engine)
        self.redis = redis  # a redis-server's client, or sagaflow.testing.memory_redis()
        self.redis.flushdb()
        self.workflows = {"topup": TOPUP}
        self.statuses: list[tuple[str, str]] = []
        hooks = Hooks(on_status=[lambda s, i, old, new: self.statuses.append((i.saga_id, new))])
        self.projector = Projector(self.db, self.redis, self.workflows, {"topup": hooks})
        self.log = SagaLog(self.db, self.workflows)
        self.store = DeadLetterStore(self.redis, lambda attempts: 0)
        self.mode = mode
        self.dispatcher = SyncDispatcher(
            max_retries=2, max_attempts=2, chained=mode != CHOREOGRAPHY
        )
        injector = FaultInjector(
            parse_faults(faults, ["credit", "debit", "notify"]), self.redis.incr, 0
        )
        self.runner = Runner(
            self.workflows, self, EventLog(self.redis), self.store, self.dispatcher, injector
        )
        self.dispatcher.runner = self.runner
        # Both services keep their outbox in the one test database. The relay process has
        # its own; the workers' fast path theirs.
        self.relay = self._relay([Outbox("wallet", self.db, WalletOutbox)])
        if mode == CHOREOGRAPHY:
            outboxes = {
                name: Outbox(name, self.db, WalletOutbox, lease_seconds=30)
                for name in ("wallet", "notifier")
            }
            self.runner.announcer = Choreography(outboxes, self._relay(outboxes.values()))
        self._ids = itertools.count(1)

    def _relay(self, outboxes) -> Relay:
        park = lambda outbox, row, error: self.runner.park_message(outbox.service, row, error)  # noqa: E731
        return Relay(list(outboxes), sender(self.runner), park)

    def start(self, amount: int, user_id: int = 7) -> str:
        ctx = TopUp(topup_id=next(self._ids), user_id=user_id, amount=amount)
        with self.db.write() as session:
            saga_id = SagaLog.create(session, TOPUP, ctx)
        self.runner.start(TOPUP, ctx)
        self.settle()
        return saga_id

    def settle(self) -> None:
        self.dispatcher.drain(self.projector)

    def balance(self, user_id: int = 7) -> int:
        with self.db.read() as session:
            wallet = session.get(Wallet, user_id)
            return wallet.balance if wallet else 0

    def steps(self, saga_id: str) -> dict:
        return {s["name"]: s for s in self.log.timeline(saga_id)["steps"]}


@pytest.fixture(params=MODES)
def mode(request) -> str:
    """Every rule holds in both modes: a chain sent up front, or each step announcing the
    next through its outbox."""
    return request.param


@pytest.fixture
def world(tmp_path, redis, mode):
    return World(tmp_path, redis, mode=mode)


# --- the rules ------------------------------------------------------------------------


def test_a_workflow_completes_and_each_step_applies_once(world):
    saga = world.start(amount=300)

    timeline = world.log.timeline(saga)
    assert timeline["status"] == SagaStatus.COMPLETED
    assert [(s["name"], s["status"], s["attempts"]) for s in timeline["steps"]] == [
        ("credit", "succeeded", 1),
        ("notify", "succeeded", 1),
    ]
    assert world.balance() == 300
    assert world.statuses == [(saga, "COMPLETED")]


def test_a_redelivered_step_changes_nothing(world):
    saga = world.start(amount=300)
    ctx = world.log.timeline(saga)["context"]

    world.runner.run_step(TOPUP, "credit", ctx, attempt=1)
    world.settle()

    assert world.balance() == 300
    assert world.steps(saga)["credit"]["attempts"] == 2


def test_a_business_error_turns_back_and_voids_the_failed_step(world):
    saga = world.start(amount=5_000)  # over the cap

    timeline = world.log.timeline(saga)
    assert timeline["status"] == SagaStatus.FAILED
    assert timeline["failed_step"] == "credit" and "over the cap" in timeline["failure_reason"]
    steps = world.steps(saga)
    assert steps["credit"]["status"] == "failed" and steps["credit"]["attempts"] == 1
    assert steps["debit"]["detail"].startswith("nothing to undo")
    assert steps["notify"]["status"] == "not_run"
    assert world.balance() == 0
    # The late step, delivered again after the saga turned back, refuses to apply.
    world.runner.dispatcher.forward(TOPUP, timeline["context"], ["credit"])
    world.settle()
    assert world.steps(saga)["credit"]["status"] == "refused"
    assert world.balance() == 0


def test_a_step_after_the_pivot_is_retried_then_parked_never_undone(tmp_path, redis, mode):
    world = World(tmp_path, redis, faults="notify:transient", mode=mode)
    saga = world.start(amount=300)

    timeline = world.log.timeline(saga)
    assert timeline["status"] == SagaStatus.COMPLETED  # the pivot applied: never undone
    assert world.steps(saga)["notify"]["status"] == "dead_lettered"
    assert world.steps(saga)["notify"]["attempts"] == 3  # one try and two retries
    [entry] = world.store.entries(saga_id=saga)
    assert (entry["name"], entry["kind"]) == ("notify", "after_pivot")
    assert "debit" not in world.steps(saga)
    assert world.balance() == 300


def test_parked_work_sent_again_by_the_dlq_finishes_and_closes_its_entry(tmp_path, redis, mode):
    world = World(tmp_path, redis, faults="notify:transient:3", mode=mode)
    saga = world.start(amount=300)
    [entry] = world.store.entries(saga_id=saga)

    world.store.start_attempt(entry["id"])
    world.runner.redispatch(entry)
    world.settle()

    assert world.store.get(entry["id"])["status"] == "resolved"
    assert world.steps(saga)["notify"]["status"] == "succeeded"
    assert world.log.timeline(saga)["status"] == SagaStatus.COMPLETED


def test_a_failing_compensation_is_parked_and_the_saga_needs_attention(tmp_path, redis, mode):
    world = World(tmp_path, redis, faults="notify:business,debit:transient", mode=mode)
    saga = world.start(amount=300)  # notify refuses: after the pivot, so no undo...
    assert world.log.timeline(saga)["status"] == SagaStatus.COMPLETED

    # ...but an operator gives up the stuck credit of another saga: its undo keeps failing.
    world.runner.turn_back(TOPUP, saga, "credit", "operator gave up")
    world.settle()

    timeline = world.log.timeline(saga)
    assert timeline["status"] == SagaStatus.NEEDS_ATTENTION
    assert world.steps(saga)["debit"]["status"] == "dead_lettered"
    assert world.balance() == 300  # nothing undone yet: it is owed


def test_turning_back_twice_dispatches_the_compensations_once(world):
    saga = world.start(amount=300)
    first = world.runner.turn_back(TOPUP, saga, "credit", "first")
    second = world.runner.turn_back(TOPUP, saga, "credit", "second")
    world.settle()

    assert first == ["debit"] and second == []
    assert [s for s in world.dispatcher.sent if s[0] == "compensate"] == [("compensate", ["debit"])]
    assert world.balance() == 0
    assert world.log.timeline(saga)["status"] == SagaStatus.FAILED


def test_a_stalled_saga_is_parked_with_what_its_retry_needs(world):
    ctx = TopUp(topup_id=99, user_id=7, amount=10)
    with world.db.write() as session:
        saga = SagaLog.create(session, TOPUP, ctx)  # its first message was lost: never sent

    parked = StallCheck(world.log, world.runner, idle_seconds=60).park_stalled(now=1e12)
    world.settle()

    assert parked == [f"{saga}:credit"]
    entry = world.store.get(parked[0])
    assert entry["args"]["ctx"] == ctx.model_dump()
    world.runner.redispatch(entry)
    world.settle()
    assert world.log.timeline(saga)["status"] == SagaStatus.COMPLETED
    assert world.balance() == 10


def test_events_read_twice_after_a_crash_are_applied_once(world):
    saga = world.start(amount=300)
    before = world.steps(saga)["credit"]["attempts"]
    # Replay the stream from the start, as a projector that crashed before acknowledging
    # would: the instance remembers what it applied.
    for entry_id, fields in world.redis.xrange("sagaflow:events"):
        with world.db.write() as session:
            world.projector.apply(
                session, __import__("sagaflow").Event.from_fields(fields), entry_id.decode()
            )
    assert world.steps(saga)["credit"]["attempts"] == before


def test_an_operator_cancels_a_saga_in_flight_at_its_next_step_boundary(world):
    from sagaflow.dlq.actions import OperatorActions, Refused

    actions = OperatorActions(world.store, world.runner, world.log, 5)
    ctx = TopUp(topup_id=99, user_id=7, amount=300)
    with world.db.write() as session:
        saga = SagaLog.create(session, TOPUP, ctx)
    world.runner.start(TOPUP, ctx)  # sent, not yet run: the saga is in flight

    plan = actions.cancel_plan(saga)
    assert (plan["turns_back_at"], plan["compensations"]) == ("credit", ["debit"])
    with pytest.raises(Refused, match="a note"):
        actions.cancel(saga, "ops@example", " ")
    actions.cancel(saga, "ops@example", "customer asked")
    world.settle()

    timeline = world.log.timeline(saga)
    assert timeline["status"] == SagaStatus.FAILED
    assert timeline["failure_reason"] == "cancelled by ops@example: customer asked"
    assert world.balance() == 0  # the fenced credit never applied
    assert world.steps(saga)["notify"]["status"] in ("not_run", "pending")
    with pytest.raises(Refused, match="already turning back"):
        actions.cancel_plan(saga)
    assert [h["action"] for h in actions.history(saga)] == ["cancel"]

    done = world.start(amount=100)
    with pytest.raises(Refused, match="COMPLETED"):
        actions.cancel_plan(done)


# --- bounded history ---------------------------------------------------------------------


def test_finished_sagas_are_archived_out_of_the_hot_tables_and_still_found_by_id(world):
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import func, update

    from sagaflow._log import SagaArchived, SagaInstance, SagaStepRow

    done, refused = world.start(amount=300), world.start(amount=5_000)
    week_ago = datetime.now(UTC) - timedelta(days=7)
    with world.db.write() as session:  # both finished a week ago
        session.execute(update(SagaInstance).values(updated_at=week_ago))
    kept_whole = world.log.timeline(done)
    fresh = world.start(amount=100)  # finished just now: kept in the hot tables
    # One still in flight, as old as the others: never archived while it may move.
    ctx = TopUp(topup_id=500, user_id=8, amount=10)
    with world.db.write() as session:
        moving = SagaLog.create(session, TOPUP, ctx)
        session.execute(
            update(SagaInstance).where(SagaInstance.saga_id == moving).values(updated_at=week_ago)
        )

    chosen = world.log.archivable(datetime.now(UTC) - timedelta(days=1))
    assert sorted(chosen) == sorted([done, refused])
    assert world.log.archive(chosen) == 2
    assert world.log.archive(chosen) == 0  # a second run moves nothing

    with world.db.read() as session:
        hot = set(session.scalars(select(SagaInstance.saga_id)))
        steps_left = session.scalar(
            select(func.count()).select_from(SagaStepRow).where(SagaStepRow.saga_id == done)
        )
        archived = set(session.scalars(select(SagaArchived.saga_id)))
    assert hot == {fresh, moving} and steps_left == 0 and archived == {done, refused}
    found = world.log.timeline(done)
    assert found["archived_at"] and {**found, "archived_at": None} == {
        **kept_whole,
        "archived_at": None,
    }
    assert world.log.timeline(refused)["status"] == SagaStatus.FAILED


def test_resolved_dlq_entries_expire_after_their_retention_and_open_ones_never(redis):
    now = [1_000_000.0]
    store = DeadLetterStore(redis, lambda attempts: 0, clock=lambda: now[0])
    redis.flushdb()
    for saga in ("topup-1", "topup-2"):
        store.push(
            saga_id=saga,
            workflow="topup",
            name="notify",
            kind="after_pivot",
            task="topup.notify",
            args={},
            error_class="TransientError",
            error="down",
            traceback="",
        )
    store.resolve("topup-1:notify", "it succeeded")
    now[0] += 3_600
    assert store.expire_resolved(retention_seconds=7_200) == 0  # resolved an hour ago
    now[0] += 7_200
    assert store.expire_resolved(retention_seconds=7_200) == 1
    assert store.get("topup-1:notify") is None
    assert store.get("topup-2:notify")["status"] != "resolved"  # open: kept however old
    assert [e["id"] for e in store.entries()] == ["topup-2:notify"]


# --- a final saga's keys in Redis expire after the grace ------------------------------


def _ttls(world, saga_id: str) -> dict[str, int]:
    """Every per-saga key that exists, by its name after the saga id's, and its TTL."""
    from sagaflow._events import saga_keys

    names = TOPUP.step_names + TOPUP.compensation_names
    found = {key: world.redis.ttl(key) for key in saga_keys(saga_id, names)}
    return {key.replace(f"{saga_id}", "<saga>"): ttl for key, ttl in found.items() if ttl != -2}


def test_a_final_sagas_markers_inputs_and_fence_expire_within_the_grace(world):
    from sagaflow._events import KEYS_GRACE_SECONDS

    done, refused = world.start(amount=300), world.start(amount=5_000)
    assert world.log.timeline(done)["status"] == SagaStatus.COMPLETED
    assert world.log.timeline(refused)["status"] == SagaStatus.FAILED

    completed, failed = _ttls(world, done), _ttls(world, refused)
    # Choreography's events are outbox messages: the saga's hash of their deliveries
    # (the refused saga's first and only step was sent directly, announcing nothing).
    delivered = {"sagaflow:deliveries:<saga>"} if world.mode == CHOREOGRAPHY else set()
    assert set(completed) == {
        "sagaflow:done:<saga>:credit",
        "sagaflow:done:<saga>:notify",
        *delivered,
    }
    assert set(failed) == {
        "sagaflow:fence:<saga>",
        "sagaflow:failure:<saga>:credit",
        "sagaflow:input:<saga>:credit",
        "sagaflow:done:<saga>:debit",
    }
    for key, ttl in {**completed, **failed}.items():
        assert 0 < ttl <= KEYS_GRACE_SECONDS, (key, ttl)


def test_a_saga_still_moving_keeps_its_keys_expiry(tmp_path, redis, mode):
    from sagaflow._events import INPUT_TTL, KEYS_GRACE_SECONDS

    # COMPLETED, but its step after the pivot is parked in the DLQ: it is still owed.
    world = World(tmp_path, redis, faults="notify:transient", mode=mode)
    parked = world.start(amount=300)
    assert world.log.timeline(parked)["status"] == SagaStatus.COMPLETED
    assert world.steps(parked)["notify"]["status"] == "dead_lettered"
    # COMPLETED a moment ago, its step after the pivot not run yet; applied in the same
    # batch as a saga that finishes.
    ctx = TopUp(topup_id=900, user_id=8, amount=10)
    with world.db.write() as session:
        moving = SagaLog.create(session, TOPUP, ctx)
    world.runner.run_step(TOPUP, "credit", ctx.model_dump(), attempt=1)
    world.dispatcher.work.clear()  # notify is on its way (choreography announced it)
    world.runner.faults = NO_FAULTS
    finished = world.start(amount=100)
    assert world.log.timeline(moving)["status"] == SagaStatus.COMPLETED
    assert world.steps(moving)["notify"]["status"] == "pending"
    assert world.log.timeline(finished)["status"] == SagaStatus.COMPLETED

    kept = {**_ttls(world, parked), **{k + " (moving)": v for k, v in _ttls(world, moving).items()}}
    # The parked saga's credit announced notify through the outbox; the moving one's
    # announcement was dropped above, undelivered.
    delivered = {"sagaflow:deliveries:<saga>"} if mode == CHOREOGRAPHY else set()
    assert set(kept) == {
        "sagaflow:done:<saga>:credit",
        "sagaflow:input:<saga>:notify",
        "sagaflow:failure:<saga>:notify",
        "sagaflow:done:<saga>:credit (moving)",
        *delivered,
    }
    for key, ttl in kept.items():
        assert ttl > INPUT_TTL - 60, (key, ttl)  # as they were written: days, not the grace
    assert all(0 < ttl <= KEYS_GRACE_SECONDS for ttl in _ttls(world, finished).values())


def test_an_expiry_already_shorter_is_not_lengthened(world):
    from sagaflow._events import DONE, KEYS_GRACE_SECONDS

    ctx = TopUp(topup_id=901, user_id=7, amount=10)
    with world.db.write() as session:
        saga = SagaLog.create(session, TOPUP, ctx)
    world.runner.start(TOPUP, ctx)
    world.dispatcher.drain()  # the work is done; the saga log has not seen it yet
    world.redis.expire(f"{DONE}{saga}:credit", 30)  # closer to its end than the grace
    world.redis.persist(f"{DONE}{saga}:notify")  # no expiry at all: it gets one
    world.settle()

    assert world.log.timeline(saga)["status"] == SagaStatus.COMPLETED
    ttls = _ttls(world, saga)
    assert 0 < ttls["sagaflow:done:<saga>:credit"] <= 30
    assert 30 < ttls["sagaflow:done:<saga>:notify"] <= KEYS_GRACE_SECONDS


def test_within_the_grace_a_late_failure_report_of_a_finished_saga_is_stale(world):
    from sagaflow._events import KEYS_GRACE_SECONDS

    saga = world.start(amount=300)
    assert 0 < world.redis.ttl(f"sagaflow:done:{saga}:credit") <= KEYS_GRACE_SECONDS

    # The link_error callback of a killed attempt of credit, arriving after the saga
    # finished: it parks nothing and turns nothing back.
    assert world.runner.step_failed(TOPUP, "credit", saga, []) == "already succeeded"
    world.settle()
    assert world.store.entries(saga_id=saga) == []
    assert world.log.timeline(saga)["status"] == SagaStatus.COMPLETED
    assert world.balance() == 300


def test_redis_failing_to_shorten_the_expiry_does_not_hold_the_saga_log_back(world, caplog):
    from redis.exceptions import ConnectionError as RedisConnectionError

    class Failing:
        def shorten(self, keys):
            raise RedisConnectionError("Redis went away")

    world.projector.expiry = Failing()
    saga = world.start(amount=300)

    assert world.log.timeline(saga)["status"] == SagaStatus.COMPLETED
    assert world.redis.xlen("sagaflow:events") == 0  # applied, acknowledged and deleted
    assert "could not shorten the expiry" in caplog.text
    assert world.redis.ttl(f"sagaflow:done:{saga}:credit") > 86_400  # as it was written
