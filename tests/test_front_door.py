"""The front door (sagaflow._runtime.Runtime), in-process: one object built from the
workflows, the databases, Redis and the settings gives an API handler its saga starts,
a worker its runner, and the orchestrator its loop, wired as every process wires them."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from sagaflow import DeclarationError, SagaStatus
from sagaflow._db import Database
from sagaflow._log import SagaBase
from sagaflow._runtime import Runtime, Settings
from sagaflow.testing import SyncDispatcher
from tests.test_runtime_rules import TOPUP, TopUp, Wallet, WalletBase, WalletOutbox

# The rules layer: in-process, no subprocess (`make test-fast`).
pytestmark = pytest.mark.rules


@pytest.fixture
def wallet_db(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'wallet.db'}", create=True)
    WalletBase.metadata.create_all(db.engine)
    SagaBase.metadata.create_all(db.engine)
    yield db
    db.dispose()


def _runtime(db, redis, databases=None) -> Runtime:
    redis.flushdb()
    dispatcher = SyncDispatcher(max_retries=2, max_attempts=2)
    runtime = Runtime(
        {TOPUP.name: TOPUP},
        databases={"wallet": db} if databases is None else databases,
        outboxes={"wallet": WalletOutbox},
        redis=redis,
        services=SimpleNamespace(db=db),
        dispatcher=dispatcher,
        settings=Settings(saga_stall_seconds=60),
    )
    dispatcher.runner = runtime.runner
    return runtime


def _start(runtime: Runtime, db, ctx: TopUp) -> str:
    start = runtime.starts.start(TOPUP)
    with db.write() as session:
        saga_id = start.write(session, ctx)
    assert start.send()
    runtime.runner.dispatcher.drain(runtime.projector())
    return saga_id


def _balance(db, user_id: int) -> int:
    with db.read() as session:
        wallet = session.get(Wallet, user_id)
        return wallet.balance if wallet else 0


def test_a_saga_started_through_the_front_door_runs_and_is_logged(wallet_db, redis):
    runtime = _runtime(wallet_db, redis)
    saga_id = _start(runtime, wallet_db, TopUp(topup_id=1, user_id=7, amount=300))

    assert saga_id == "topup-1"
    timeline = runtime.saga_log.timeline(saga_id)
    assert timeline["status"] == SagaStatus.COMPLETED
    assert [s["status"] for s in timeline["steps"]] == ["succeeded", "succeeded"]
    assert _balance(wallet_db, 7) == 300
    # The orchestrator's stall check, built by the same object, finds nothing owed.
    assert runtime.orchestrator().stall.park_stalled(now=time.time() + 3600) == []


def test_a_refused_step_turns_the_saga_back_through_the_front_door(wallet_db, redis):
    runtime = _runtime(wallet_db, redis)
    saga_id = _start(runtime, wallet_db, TopUp(topup_id=2, user_id=8, amount=5_000))

    timeline = runtime.saga_log.timeline(saga_id)
    assert timeline["status"] == SagaStatus.FAILED
    assert timeline["failed_step"] == "credit"
    assert _balance(wallet_db, 8) == 0


def test_a_process_without_the_home_database_is_told_so(wallet_db, redis):
    runtime = _runtime(wallet_db, redis, databases={})
    with pytest.raises(DeclarationError, match="does not serve 'wallet', the home"):
        runtime.saga_log  # noqa: B018
    with pytest.raises(DeclarationError, match="does not serve 'wallet', the home of workflow"):
        runtime.starts.start(TOPUP)


def test_a_homes_stream_group_and_lock_are_named_after_it_and_old_names_are_drained(
    wallet_db, redis
):
    """Two homes on one Redis never share a key; progress reports an earlier release's
    workers left in the old, shared stream are still applied, then deleted."""
    import dataclasses

    from sagaflow import EventLog, RedisKeys

    runtime = _runtime(wallet_db, redis)
    assert runtime.keys == RedisKeys.of_home("wallet")
    assert runtime.runner.events.stream == "sagaflow:wallet:events"
    elsewhere = RedisKeys.of_home(dataclasses.replace(TOPUP, home="ledger").home)
    assert {runtime.keys.stream, runtime.keys.group, runtime.keys.lock}.isdisjoint(
        {elsewhere.stream, elsewhere.group, elsewhere.lock}
    )

    saga_id = _start(runtime, wallet_db, TopUp(topup_id=3, user_id=9, amount=100))
    assert redis.xlen(runtime.keys.stream) == 0  # applied, then deleted
    projector = runtime.projector()
    assert projector.hold_lock() and redis.get(runtime.keys.lock)
    projector.release_lock()

    # An old worker reports on the old stream: the projector applies it on its next look.
    ctx = TopUp(topup_id=4, user_id=9, amount=50)
    with wallet_db.write() as session:
        late = runtime.saga_log.create(session, TOPUP, ctx)
    old = EventLog(redis)  # the names before they were per home
    runtime.runner.events, kept = old, runtime.runner.events
    runtime.runner.run_step(TOPUP, "credit", ctx.model_dump(), attempt=1)
    runtime.runner.events = kept
    assert (
        redis.xlen(RedisKeys().stream) >= 2
        and runtime.saga_log.step(late, "credit")["status"] == "pending"
    )
    assert projector.drain_legacy() >= 2
    assert runtime.saga_log.step(late, "credit")["status"] == "succeeded"
    assert redis.xlen(RedisKeys().stream) == 0
    assert runtime.saga_log.timeline(saga_id)["status"] == SagaStatus.COMPLETED
