"""Failure reports that are stale, incomplete or not the work's fault, in-process and in
seconds (the runtime rules' world: a real SQLite database and a real Redis, the synchronous
dispatcher). The end-to-end versions, with real workers, are in test_outages.py.

- a failure reported for work that has succeeded (the late callback of a killed attempt)
  parks nothing and pages nobody;
- an incident that only repeats pages once;
- work parked without its input gets it from the saga log;
- an unreachable dependency is told from the work's own failures, spends no DLQ attempt,
  and is alerted once for the outage, not once per order.
"""

from __future__ import annotations

import sqlite3

import pytest
import redis as redis_lib
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from config.settings import Settings
from sagaflow import Phase, SagaLog, SagaStatus
from sagaflow._dependencies import OutageBoard, unreachable
from sagaflow._events import INPUT
from sagaflow.dlq.alerts import SlackAlerter
from sagaflow.dlq.store import NEEDS_HUMAN, RESOLVED, RETRYING
from sagaflow.dlq.worker import DeadLetterWorker, RedisOutagePage
from tests.slack_server import SlackServer
from tests.support import free_port
from tests.test_runtime_rules import TOPUP, TopUp, World, mode  # noqa: F401

# The rules layer: in-process, no subprocess (`make test-fast`).
pytestmark = pytest.mark.rules


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(tmp_path, redis, mode):  # noqa: F811
    return World(tmp_path, redis, mode=mode)


def dlq_worker(world: World, clock=None, **settings) -> DeadLetterWorker:
    config = Settings().with_overrides(**settings)
    if clock is not None:
        world.store.clock = clock
        world.runner.outages = OutageBoard(world.redis, clock=clock)
    # Slack not configured: alerts go to the log, and the entry records that they went.
    return DeadLetterWorker(world.store, world.runner, SlackAlerter(config), config, "saga-dlq")


def _redis_refused() -> redis_lib.ConnectionError:
    """What a client gets from a Redis that is not there: asked once (redis-py's default
    retries with backoff would spend seconds on each)."""
    client = redis_lib.Redis(
        port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    with pytest.raises(redis_lib.ConnectionError) as refused:
        client.ping()
    return refused.value


def refused_connection() -> OperationalError:
    """A real driver error: PostgreSQL's client connecting where nothing listens."""
    engine = create_engine(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none")
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError("a connection to a closed port succeeded")


def test_a_late_failure_report_for_work_that_succeeded_parks_nothing(world):
    saga = world.start(amount=300)
    assert world.log.timeline(saga)["status"] == SagaStatus.COMPLETED

    # The link_error callback of an attempt that was killed, arriving after a redelivery
    # finished the work: there is no failure marker, as for a task killed mid-step.
    outcome = world.runner.step_failed(TOPUP, "credit", saga, [])
    world.settle()

    assert outcome == "already succeeded"
    assert world.store.entries(saga_id=saga) == []
    assert world.log.timeline(saga)["status"] == SagaStatus.COMPLETED
    assert world.runner.dead_letter(TOPUP, "notify", saga, {}, "stalled?") is None


def test_an_entry_whose_work_succeeded_meanwhile_is_resolved_by_itself(world):
    ctx = TopUp(topup_id=41, user_id=7, amount=10)
    with world.db.write() as session:
        saga = SagaLog.create(session, TOPUP, ctx)
    world.runner.events.emit_and_read_fence(
        world.runner.event(TOPUP, saga, "credit", Phase.STARTED, attempt=1),
        keep_input=ctx.model_dump(),
    )
    world.runner.step_failed(TOPUP, "credit", saga, [])  # killed: parked by its callback
    [entry] = world.store.entries(saga_id=saga)
    # The broker redelivers the killed attempt's message, which succeeds...
    world.runner.dispatcher.forward(TOPUP, ctx.model_dump(), ["credit", "notify"])
    world.settle()
    assert world.store.get(entry["id"])["status"] == RESOLVED
    # ...and an entry re-opened by a report that raced it is closed by the DLQ worker
    # without sending the work again or paging anyone.
    world.redis.hset(f"dlq:entry:{entry['id']}", mapping={"status": RETRYING})
    worker = dlq_worker(world)

    assert worker.handle(world.store.get(entry["id"])) == "already succeeded"
    assert world.store.get(entry["id"])["status"] == RESOLVED
    assert world.balance() == 10


def test_the_same_incident_pages_once(world):
    ctx = TopUp(topup_id=42, user_id=7, amount=10)
    with world.db.write() as session:
        saga = SagaLog.create(session, TOPUP, ctx)
    worker = dlq_worker(world)
    for _round in range(3):
        # Parked, given up, and (by a report that came back later) parked again with the
        # same error: one page for the incident.
        world.runner.dead_letter(TOPUP, "credit", saga, {"ctx": None}, "stuck: no progress")
        eid = f"{saga}:credit"
        world.store.attempt_failed(eid, "Error", "stuck: no progress", give_up=True)
        worker.handle(world.store.get(eid))
        world.store.resolve(eid, "an operator looked")

    assert world.store.get(eid)["alerted_via"] == "earlier alert"
    # A different error is a different incident: it pages.
    world.runner.dead_letter(TOPUP, "credit", saga, {"ctx": None}, "stuck: something else")
    world.store.attempt_failed(eid, "Error", "stuck: something else", give_up=True)
    assert worker.handle(world.store.get(eid)) == "alerted in the log"


def test_work_parked_without_its_input_gets_it_from_the_saga_log(world):
    ctx = TopUp(topup_id=43, user_id=7, amount=25)
    with world.db.write() as session:
        saga = SagaLog.create(session, TOPUP, ctx)
    # Redis lost the kept input (it failed mid-step), then the callback parked the step.
    world.redis.delete(f"{INPUT}{saga}:credit")
    world.runner.step_failed(TOPUP, "credit", saga, [])
    eid = f"{saga}:credit"
    assert world.store.get(eid)["args"]["ctx"] is None
    worker = dlq_worker(world)
    # Before the orchestrator has run, the DLQ waits for the input instead of paging.
    assert worker.handle(world.store.get(eid)) == "waiting for its input"
    assert world.store.get(eid)["attempts"] == 0

    world.settle()  # the orchestrator's projector applies the dead_lettered event

    assert world.store.get(eid)["args"]["ctx"] == ctx.model_dump()
    world.runner.redispatch(world.store.get(eid))
    world.settle()
    assert world.log.timeline(saga)["status"] == SagaStatus.COMPLETED
    assert world.balance() == 25


def test_unreachable_dependencies_are_told_from_the_works_own_errors(tmp_path):
    assert unreachable(refused_connection(), "products") == "the products database"
    refused = _redis_refused()
    assert unreachable(refused) == "Redis"
    # An error raised while handling an outage is about the outage.
    try:
        try:
            raise refused_connection()
        except OperationalError:
            raise RuntimeError("could not record the failure either") from None
    except RuntimeError as chained:
        assert unreachable(chained, "balances") == "the balances database"
    # The work's own errors are not outages: a missing table, a bug, a refusal.
    engine = create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(OperationalError) as missing, engine.connect() as conn:
        conn.execute(text("SELECT * FROM nowhere"))
    engine.dispose()
    assert isinstance(missing.value.orig, sqlite3.OperationalError)
    assert unreachable(missing.value, "products") is None
    assert unreachable(ValueError("bad input")) is None


def test_a_dlq_retry_that_meets_an_outage_spends_no_attempt(world):
    ctx = TopUp(topup_id=44, user_id=7, amount=10)
    with world.db.write() as session:
        saga = SagaLog.create(session, TOPUP, ctx)
    world.runner.dead_letter(TOPUP, "credit", saga, {"ctx": ctx.model_dump()}, "stalled")
    eid = f"{saga}:credit"
    down = refused_connection()
    for _ in range(10):  # far more than the 2 attempts the world allows
        world.store.start_attempt(eid)
        world.runner.after_failure(TOPUP, "credit", down, saga, {}, eid, max_attempts=2)

    entry = world.store.get(eid)
    assert (entry["status"], entry["attempts"]) == (RETRYING, 0)
    assert entry["dependency"] == "the wallet database"
    # The work's own failure still counts, and gives up at the limit.
    for _ in range(2):
        world.store.start_attempt(eid)
        world.runner.after_failure(
            TOPUP, "credit", RuntimeError("a bug"), saga, {}, eid, max_attempts=2
        )
    assert world.store.get(eid)["status"] == NEEDS_HUMAN


def test_an_outage_is_alerted_once_and_once_more_when_it_is_over(world):
    clock = Clock()
    worker = dlq_worker(world, clock=clock, outage_alert_seconds=60)
    board = world.runner.outages
    for _ in range(50):  # fifty orders meet the same outage
        board.record("the products database", refused_connection())
        clock.now += 1

    assert worker.check_outages() == []  # under a minute: not yet worth a page
    clock.now += 15
    assert worker.check_outages() == ["the products database unreachable"]
    assert worker.check_outages() == []  # once
    # Work parked by it meanwhile is covered by that alert, not paged one by one.
    with world.db.write() as session:
        saga = SagaLog.create(session, TOPUP, TopUp(topup_id=45, user_id=7, amount=1))
    world.runner.dead_letter(TOPUP, "credit", saga, {"ctx": None}, refused_connection())
    eid = f"{saga}:credit"
    world.store.attempt_failed(
        eid, "OperationalError", "down", give_up=True, dependency="the products database"
    )
    assert worker.handle(world.store.get(eid)) == "covered by the outage alert"

    board.back("the products database")  # a step reached it again
    assert worker.check_outages() == ["the products database back"]
    assert worker.check_outages() == []
    assert board.rows() == {}


def test_an_outage_nobody_was_paged_for_is_forgotten_quietly(world):
    clock = Clock()
    worker = dlq_worker(world, clock=clock, outage_alert_seconds=60)
    world.runner.outages.record("Redis", "ConnectionError: a blip")
    clock.now += 5
    world.runner.outages.back("Redis")

    assert worker.check_outages() == []
    assert world.runner.outages.rows() == {}


def test_redis_itself_gone_is_paged_once_from_the_dlq_workers_loop(world):
    clock = Clock()
    refused = _redis_refused()
    with SlackServer() as slack:
        worker = dlq_worker(
            world, clock=clock, outage_alert_seconds=60, slack_webhook_url=slack.webhook_url
        )
        page = RedisOutagePage(worker, clock=clock)
        for _ in range(90):  # the loop's rounds while Redis is gone
            page.failed(refused)
            clock.now += 1
        page.ok()
        page.ok()

        [down, back] = slack.texts()
    assert "Redis cannot be reached" in down and "90 failed attempts" not in down
    assert "Redis answers again" in back and "90 failed attempts" in back


def test_the_projector_makes_its_group_again_after_redis_lost_its_data(world, request):
    if request.node.callspec.params.get("redis") == "inmemory":
        pytest.skip("fakeredis answers XREADGROUP on a lost stream otherwise than NOGROUP")
    world.start(amount=10)  # the group exists and the projector knows it
    world.redis.flushall()  # Redis restarted without persistence
    with pytest.raises(redis_lib.ResponseError, match="NOGROUP"):
        world.projector.run_once(block_ms=1)

    saga = world.start(amount=20)  # the next round makes the group again

    assert world.log.timeline(saga)["status"] == SagaStatus.COMPLETED
