"""Choreography's own rules, in-process (the rules both modes share are in
test_runtime_rules.py, run in each mode): each step's event is written in the step's own
transaction, a writer that dies after its commit loses nothing, and duplicate and late
events change nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from sagaflow import SagaLog, SagaStatus
from sagaflow._choreography import CHOREOGRAPHY, react
from tests.test_runtime_rules import TOPUP, Sent, TopUp, WalletOutbox, World

# The rules layer: in-process, no subprocess (`make test-fast`).
pytestmark = pytest.mark.rules


@pytest.fixture
def world(tmp_path, redis):
    return World(tmp_path, redis, mode=CHOREOGRAPHY)


def events(world) -> list:
    with world.db.read() as session:
        rows = session.scalars(
            select(WalletOutbox).where(WalletOutbox.kind == "event").order_by(WalletOutbox.id)
        ).all()
        return [(json.loads(r.payload), r.sent_at, r.claimed_by) for r in rows]


def expire_holds(world) -> None:
    """What the passing of OUTBOX_LEASE_SECONDS does to a dead writer's held rows."""
    with world.db.write() as session:
        session.execute(
            update(WalletOutbox).values(claimed_until=datetime.now(UTC) - timedelta(seconds=1))
        )


def start_without_sending(world, amount: int) -> str:
    """Run the first step as a worker that dies right after its commit would: the step's
    change and its event are in the database, nothing was sent."""
    world.runner.announcer.send = lambda announcement, **finished: None
    saga = world.start(amount=amount)
    del world.runner.announcer.send
    return saga


def test_each_step_announces_the_next_in_its_own_transaction(world):
    saga = world.start(amount=300)

    assert world.log.timeline(saga)["status"] == SagaStatus.COMPLETED
    [(payload, sent_at, _)] = events(world)  # the last step announces nothing: nobody listens
    assert (payload["event"], payload["after"], payload["final"]) == ("CreditDone", "credit", True)
    assert payload["ctx"] == {"topup_id": 1, "user_id": 7, "amount": 300}
    assert sent_at is not None
    assert world.dispatcher.sent == [("forward", ["credit"]), ("forward", ["notify"])]


def test_a_refused_step_rolls_its_event_back_with_its_change(world):
    saga = world.start(amount=5_000)  # over the cap: credit's transaction rolls back

    assert world.log.timeline(saga)["status"] == SagaStatus.FAILED
    assert events(world) == []  # no CreditDone; the void (debit) is the last word
    assert ("forward", ["notify"]) not in world.dispatcher.sent


def test_a_writer_that_dies_after_its_commit_loses_nothing(world):
    saga = start_without_sending(world, 300)
    [(payload, sent_at, held_by)] = events(world)
    assert sent_at is None and held_by is not None and payload["final"] is False
    assert world.relay.run_once() == 0  # held: the relays leave it to its writer for a lease

    expire_holds(world)
    assert world.relay.run_once() == 1  # sent unfinished: its consumer asks credit again
    world.settle()

    assert world.log.timeline(saga)["status"] == SagaStatus.COMPLETED
    assert world.balance() == 300  # credit asked twice, applied once
    assert world.steps(saga)["credit"]["attempts"] == 2


def test_a_step_asked_again_sends_its_event_under_an_id_its_listener_has_not_had(world):
    saga = start_without_sending(world, 300)
    expire_holds(world)
    [(unfinished, _, _)] = events(world)
    # The relay sends the unfinished event; the step it asks runs before the relay marks
    # the row sent, so the step finishes that same row and sends it under the row's id.
    react(world.runner, unfinished, "outbox-wallet-1")
    world.settle()

    assert world.dispatcher.dropped == []
    assert world.log.timeline(saga)["status"] == SagaStatus.COMPLETED
    assert world.balance() == 300


def test_a_redelivered_step_finishes_the_event_its_first_run_wrote(world):
    saga = start_without_sending(world, 300)  # died after its commit, before sending

    ctx = world.log.timeline(saga)["context"]
    world.runner.run_step(TOPUP, "credit", ctx, attempt=2)  # the broker delivers it again
    world.settle()

    [(payload, sent_at, _)] = events(world)  # the same row, so the same message id
    assert payload["final"] is True and sent_at is not None
    assert world.log.timeline(saga)["status"] == SagaStatus.COMPLETED
    assert world.balance() == 300


def test_an_event_delivered_twice_runs_its_work_once(world):
    saga = world.start(amount=300)
    [(payload, _, _)] = events(world)

    react(world.runner, payload, "outbox-wallet-1")  # the relay sending the row again
    react(world.runner, payload, "outbox-wallet-9")  # the same news under another id
    world.settle()

    assert world.dispatcher.dropped == ["outbox-wallet-1"]  # notify already had it
    assert world.steps(saga)["notify"]["attempts"] == 2  # the other ran, changing nothing
    with world.db.read() as session:
        assert len(session.scalars(select(Sent)).all()) == 1
    assert world.balance() == 300
    assert world.log.timeline(saga)["status"] == SagaStatus.COMPLETED


def test_an_event_that_arrives_after_its_saga_turned_back_is_refused(world):
    saga = start_without_sending(world, 300)
    world.runner.turn_back(TOPUP, saga, "credit", "an operator gave it up")
    world.settle()
    assert world.balance() == 0

    [(payload, _, _)] = events(world)
    react(world.runner, {**payload, "final": True}, "outbox-wallet-late")  # a late CreditDone
    expire_holds(world)
    world.relay.run_once()  # and the unfinished one, which asks credit again
    world.settle()

    steps = world.steps(saga)
    assert steps["notify"]["status"] == "refused"
    assert steps["credit"]["status"] in ("succeeded", "refused")
    assert world.balance() == 0
    assert world.log.timeline(saga)["status"] == SagaStatus.FAILED


def test_a_stalled_start_is_found_the_same_way_in_choreography(world):
    from sagaflow._orchestrator import StallCheck

    ctx = TopUp(topup_id=42, user_id=7, amount=10)
    with world.db.write() as session:
        saga = SagaLog.create(session, TOPUP, ctx)

    [parked] = StallCheck(world.log, world.runner, idle_seconds=60).park_stalled(now=1e12)
    world.runner.redispatch(world.store.get(parked))
    world.settle()

    assert world.log.timeline(saga)["status"] == SagaStatus.COMPLETED
    assert world.balance() == 10
