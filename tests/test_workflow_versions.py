"""A saga runs by its own version's plan (issue 19): in-process, with the rules tests'
little world (tests/test_runtime_rules.py) and two versions of its workflow. Version 1
reserves the top-up first; version 2 checks it for fraud instead (a step added, one
removed, both before the pivot) and makes `notify` undoable (the pivot moves).

The runtime under test is v2's build, which keeps v1 in `earlier`: a saga started on v1
before the deploy runs, and is undone, by v1's plan. The Celery adapter's own part (the
version a message carries, a version nobody here knows) is tested on its tasks, called
in-process with a request of their own and no broker."""

from __future__ import annotations

import logging
import time

import pytest
from celery import Celery
from celery.exceptions import Ignore, Retry

from sagaflow import (
    Compensation,
    DeclarationError,
    RetryPolicy,
    SagaLog,
    SagaStatus,
    Step,
    UnknownVersion,
    WorkerLostTooOften,
    Workflow,
    plan_of,
)
from sagaflow._choreography import MODES
from sagaflow._runtime import Settings
from sagaflow.celery_app import STEP_FAILED, CeleryDispatcher, install, routes
from tests.test_runtime_rules import TooMuch, TopUp, TransientError, World, credit, debit, notify

pytestmark = pytest.mark.rules


# --- two versions of "top up and notify" ---------------------------------------------------


def _ran(deps, saga_id: str, what: str) -> None:
    deps.redis.rpush(f"ran:{saga_id}", what)


def _doing(what: str):
    def action(deps, ctx: TopUp):
        _ran(deps, f"topup-{ctx.topup_id}", what)
        return ctx, what

    action.__name__ = what
    return action


def _undoing(what: str):
    def undo(deps, saga_id: str) -> str:
        _ran(deps, saga_id, what)
        return what

    undo.__name__ = what
    return undo


def _notify_as(version: str):
    """notify's code as each version ships it (the same step: only what it records differs,
    so a test sees which plan ran it)."""

    def action(deps, ctx: TopUp):
        _ran(deps, f"topup-{ctx.topup_id}", f"notify@{version}")
        return notify(deps, ctx)

    return action


V1 = Workflow(
    name="topup",
    context=TopUp,
    key=lambda ctx: ctx.topup_id,
    home="wallet",
    version="1",
    steps=[
        Step("reserve", "wallet", _doing("reserve"), Compensation("release", _undoing("release"))),
        Step("credit", "wallet", credit, Compensation("debit", debit)),
        Step("notify", "notifier", _notify_as("1"), retry=RetryPolicy(max_retries=2)),
    ],
    business_errors=(TooMuch,),
    retryable=(TransientError,),
)

V2_NOTIFY_RETRY = RetryPolicy(max_retries=4, backoff=3, backoff_max=60, soft_time_limit=30.0)

V2 = Workflow(
    name="topup",
    context=TopUp,
    key=lambda ctx: ctx.topup_id,
    home="wallet",
    version="2",
    steps=[
        Step(
            "check_fraud",
            "wallet",
            _doing("check_fraud"),
            Compensation("clear_fraud", _undoing("clear_fraud")),
        ),
        Step("credit", "wallet", credit, Compensation("debit", debit)),
        # And retries it longer, further apart, with a time limit of its own.
        Step(
            "notify",
            "notifier",
            _notify_as("2"),
            Compensation("unnotify", _undoing("unnotify")),
            retry=V2_NOTIFY_RETRY,
        ),
    ],
    business_errors=(TooMuch,),
    retryable=(TransientError,),
    earlier=(V1,),
)


@pytest.fixture(params=MODES)
def mode(request) -> str:
    return request.param


def _world(tmp_path, redis, mode: str, faults: str = "") -> World:
    """The rules' world, built by v2's release: v2 current, v1 still known."""
    world = World(tmp_path, redis, faults=faults, mode=mode)
    # The runner, projector and saga log share this one mapping.
    world.workflows["topup"] = V2
    return world


def _start(world: World, wf: Workflow, amount: int) -> str:
    """A saga started on `wf` (v1: as a release before the deploy recorded and sent it)."""
    ctx = TopUp(topup_id=next(world._ids), user_id=7, amount=amount)
    with world.db.write() as session:
        saga_id = SagaLog.create(session, wf, ctx)
    world.runner.start(wf, ctx)
    world.settle()
    return saga_id


def _ran_for(world: World, saga_id: str) -> list[str]:
    return [x.decode() for x in world.redis.lrange(f"ran:{saga_id}", 0, -1)]


# --- the declaration ----------------------------------------------------------------------


def test_a_workflow_finds_each_known_versions_plan_and_refuses_any_other():
    assert V2.known_versions == ["2", "1"]
    assert V2.plan("1") is V1 and V2.plan("2") is V2
    # Work sent before versions were carried, a saga recorded before they were kept.
    assert V2.plan("") is V2 and V2.plan(None) is V2
    assert plan_of({"topup": V2}, "topup", "1") is V1
    with pytest.raises(UnknownVersion, match="no worker knows version 3 of workflow topup") as e:
        V2.plan("3")
    assert e.value.known == ["2", "1"] and "(this process knows: 2, 1)" in str(e.value)
    # A step only v1 has still needs its service; the earlier plan is v1's as declared.
    assert V2.any_plan_with("reserve") is V1 and V2.any_plan_with("credit") is V2
    assert V2.any_plan_with("nothing") is None


def test_an_earlier_version_must_be_the_same_workflow_with_the_same_home():
    other = Workflow(
        name="other", context=TopUp, key=lambda c: c.topup_id, home="wallet", steps=V1.steps
    )
    with pytest.raises(DeclarationError, match="same workflow"):
        Workflow(**_fields(V2), earlier=(other,))
    elsewhere = Workflow(
        name="topup", context=TopUp, key=lambda c: c.topup_id, home="notifier", steps=V1.steps
    )
    with pytest.raises(DeclarationError, match="share one home"):
        Workflow(**_fields(V2), earlier=(elsewhere,))
    with pytest.raises(DeclarationError, match="two different plans are both version 2"):
        Workflow(**_fields(V1, version="2"), earlier=(V2,))
    # An earlier version's own earlier ones are kept (a declaration copied as it was).
    v3 = Workflow(**{**_fields(V2), "version": "3"}, earlier=(V2,))
    assert v3.known_versions == ["3", "2", "1"]


def _fields(wf: Workflow, **changes) -> dict:
    fields = dict(
        name=wf.name,
        context=wf.context,
        key=wf.key,
        home=wf.home,
        steps=wf.steps,
        business_errors=wf.business_errors,
        retryable=wf.retryable,
        version=wf.version,
    )
    return {**fields, **changes}


# --- a saga runs by its own version's plan ----------------------------------------------------


def test_a_v1_saga_runs_v1s_steps_only_after_v2_is_deployed(tmp_path, redis, mode):
    world = _world(tmp_path, redis, mode)
    saga = _start(world, V1, amount=300)

    # v1's steps, v1's code; the step v2 added never runs, the one it removed does.
    assert _ran_for(world, saga) == ["reserve", "notify@1"]
    timeline = world.log.timeline(saga)
    assert timeline["version"] == "1" and timeline["status"] == SagaStatus.COMPLETED
    assert [(s["name"], s["status"]) for s in timeline["steps"]] == [
        ("reserve", "succeeded"),
        ("credit", "succeeded"),
        ("notify", "succeeded"),
    ]
    assert world.balance() == 300


def test_a_v1_saga_that_fails_after_the_deploy_undoes_v1s_steps_only(tmp_path, redis, mode):
    world = _world(tmp_path, redis, mode)
    saga = _start(world, V1, amount=5_000)  # over the cap: credit refuses

    # v1's undo of what applied, newest first: never v2's clear_fraud.
    assert _ran_for(world, saga) == ["reserve", "release"]
    timeline = world.log.timeline(saga)
    assert timeline["status"] == SagaStatus.FAILED and timeline["failed_step"] == "credit"
    steps = {s["name"]: s["status"] for s in timeline["steps"]}
    assert steps == {
        "reserve": "succeeded",
        "credit": "failed",
        "notify": "not_run",
        "debit": "succeeded",
        "release": "succeeded",
    }
    assert world.balance() == 0


def test_a_v2_saga_gets_the_step_v2_added(tmp_path, redis, mode):
    world = _world(tmp_path, redis, mode)
    saga = _start(world, V2, amount=300)
    failed = _start(world, V2, amount=5_000)

    assert _ran_for(world, saga) == ["check_fraud", "notify@2"]
    assert world.log.timeline(saga)["version"] == "2"
    assert [s["name"] for s in world.log.timeline(saga)["steps"]] == [
        "check_fraud",
        "credit",
        "notify",
    ]
    assert _ran_for(world, failed) == ["check_fraud", "clear_fraud"]


def test_the_saga_log_reads_a_v1_saga_by_v1s_pivot(tmp_path, redis, mode):
    # notify keeps failing and is parked. Under v1 it comes after the pivot (credit): the
    # saga is COMPLETED. Under v2 notify is the pivot: it would still be PENDING.
    world = _world(tmp_path, redis, mode, faults="notify:transient")
    saga = _start(world, V1, amount=300)

    assert world.steps(saga)["notify"]["status"] == "dead_lettered"
    assert world.log.timeline(saga)["status"] == SagaStatus.COMPLETED
    [entry] = world.store.entries(saga_id=saga)
    assert (entry["name"], entry["kind"], entry["version"]) == ("notify", "after_pivot", "1")


def test_a_v1_saga_parked_in_the_dlq_is_sent_again_by_v1s_plan(tmp_path, redis, mode):
    world = _world(tmp_path, redis, mode, faults="credit:transient:3")
    saga = _start(world, V1, amount=300)
    [entry] = world.store.entries(saga_id=saga)
    assert (entry["name"], entry["version"]) == ("credit", "1")

    world.store.start_attempt(entry["id"])
    world.runner.redispatch(entry)
    world.settle()

    assert world.store.get(entry["id"])["status"] == "resolved"
    assert world.log.timeline(saga)["status"] == SagaStatus.COMPLETED
    assert _ran_for(world, saga) == ["reserve", "notify@1"]  # v1's notify, no fraud check


def test_an_operator_cancels_a_v1_saga_by_v1s_plan(tmp_path, redis, mode):
    from sagaflow.dlq.actions import OperatorActions

    world = _world(tmp_path, redis, mode)
    actions = OperatorActions(world.store, world.runner, world.log, 5)
    ctx = TopUp(topup_id=99, user_id=7, amount=300)
    with world.db.write() as session:
        saga = SagaLog.create(session, V1, ctx)

    plan = actions.cancel_plan(saga)
    assert (plan["turns_back_at"], plan["compensations"]) == ("reserve", ["release"])
    actions.cancel(saga, "ops@example", "customer asked")
    world.settle()
    assert _ran_for(world, saga) == ["release"]
    assert world.log.timeline(saga)["status"] == SagaStatus.FAILED


def test_a_process_that_does_not_know_a_sagas_version_refuses_to_send_its_work(
    tmp_path, redis, mode
):
    world = _world(tmp_path, redis, mode, faults="credit:transient:3")
    saga = _start(world, V1, amount=300)
    [entry] = world.store.entries(saga_id=saga)

    world.workflows["topup"] = Workflow(**_fields(V2))  # v2 alone: v1 dropped too early
    with pytest.raises(UnknownVersion, match="no worker knows version 1 of workflow topup"):
        world.runner.redispatch(entry)


# --- the Celery adapter: the version a message carries ----------------------------------


class _Sent:
    """What SagaTask sends back to the queue, instead of a broker."""

    def __init__(self) -> None:
        self.messages: list[dict] = []

    def signature_from_request(self, request, args, kwargs, **options):
        sent = self

        class Signature:
            def apply_async(self):
                sent.messages.append({"args": args, "kwargs": kwargs, **options})

        return Signature()


DEFAULTS = RetryPolicy(
    max_retries=2, backoff=1, backoff_max=4, jitter=False, soft_time_limit=5.0, time_limit=9.0
)


def _adapter(tmp_path, redis, monkeypatch, faults: str = ""):
    """v2's build of the Celery tasks, over the rules' world (orchestration), called
    in-process: each call gets a request of its own, as a worker's delivery would."""
    world = _world(tmp_path, redis, "orchestration", faults=faults)
    app = Celery("versions-test", set_as_current=False)
    install(
        app,
        [V2],
        defaults=DEFAULTS,
        build_runner=lambda: world.runner,
        settings=Settings(unknown_version_wait_seconds=600.0),
    )
    sent = _Sent()

    def call(task_name: str, *args, retries: int = 0, **kwargs):
        task = app.tasks[task_name]
        monkeypatch.setattr(task, "signature_from_request", sent.signature_from_request)
        task.push_request(
            id=f"task-{task_name}",
            retries=retries,
            args=args,
            kwargs=kwargs,
            called_directly=False,  # as a worker runs it: Celery's retry sends a message
        )
        try:
            return task(*args, **kwargs)
        finally:
            task.pop_request()

    return world, app, call, sent


@pytest.fixture
def adapter(tmp_path, redis, monkeypatch):
    return _adapter(tmp_path, redis, monkeypatch)


def test_every_known_versions_steps_have_their_tasks(adapter):
    _, app, _, _ = adapter
    names = {n for n in app.tasks if n.startswith("topup.")}
    # v2's, and v1's removed step and its undo, on their own service's queue.
    assert names == {
        "topup.check_fraud",
        "topup.clear_fraud",
        "topup.credit",
        "topup.debit",
        "topup.notify",
        "topup.unnotify",
        "topup.reserve",
        "topup.release",
    }
    assert routes([V2])["topup.reserve"] == {"queue": "wallet"}
    assert V2.services == ["wallet", "notifier"]


def test_a_message_says_its_sagas_version_and_runs_by_that_plan(adapter):
    world, app, call, _ = adapter
    ctx = TopUp(topup_id=5, user_id=7, amount=300).model_dump()
    saga = "topup-5"

    call("topup.notify", ctx, saga_id=saga, version="1")
    call("topup.notify", ctx, saga_id=saga, version="2")
    # Sent before versions were carried: the current plan, as then.
    call("topup.notify", ctx, saga_id=saga)
    assert _ran_for(world, saga) == ["notify@1", "notify@2", "notify@2"]

    # What the dispatcher sends says the version of the plan it was given (the saga's own).
    signatures = []
    dispatcher = CeleryDispatcher(app)
    dispatcher._send = signatures.extend
    dispatcher.forward(V1, ctx, V1.step_names)
    dispatcher.compensate(V1, saga, ["debit", "release"])
    assert [s.kwargs["version"] for s in signatures] == ["1"] * 5
    errbacks = [s.options["link_error"][0] for s in signatures]
    assert {e["args"][0]["version"] for e in errbacks} == {"1"}


def test_a_sagas_work_is_retried_and_timed_by_its_own_versions_policy(tmp_path, redis, monkeypatch):
    """v2 retries notify four times, 3 s apart and doubling; v1 twice, by the defaults'
    backoff. One build runs both: each saga's attempts follow the plan it started on."""
    world, app, call, sent = _adapter(tmp_path, redis, monkeypatch, faults="notify:transient")
    ctx = TopUp(topup_id=9, user_id=7, amount=300).model_dump()

    for version, countdown in (("1", 2), ("2", 6)):  # the second retry: backoff * 2^1
        with pytest.raises(Retry):
            call("topup.notify", ctx, saga_id="topup-9", version=version, retries=1)
        assert (sent.messages[-1]["retries"], sent.messages[-1]["countdown"]) == (2, countdown)
    # The third failure: v1's retries are spent (the error is the saga's to route), v2's not.
    with pytest.raises(TransientError):
        call("topup.notify", ctx, saga_id="topup-9", version="1", retries=2)
    with pytest.raises(Retry):
        call("topup.notify", ctx, saga_id="topup-9", version="2", retries=2)
    assert sent.messages[-1]["countdown"] == 12
    # Celery keeps an explicit max_retries on the task object; a v1 message after a v2
    # retry is still bounded by v1's two.
    with pytest.raises(TransientError):
        call("topup.notify", ctx, saga_id="topup-9", version="1", retries=2)

    # Time limits travel with the message: the worker's pool times each message by the
    # limits it carries, and the task's own are the settings' (what a message without
    # any gets), not the newest declaration's.
    signatures = []
    dispatcher = CeleryDispatcher(app)
    dispatcher._send = signatures.extend
    dispatcher.forward(V2, ctx, ["notify"])
    dispatcher.forward(V1, ctx, ["notify"])
    dispatcher.compensate(V2, "topup-9", ["unnotify"])
    assert [s.options.get("soft_time_limit") for s in signatures] == [30.0, None, 30.0]
    assert all("time_limit" not in s.options for s in signatures)
    task = app.tasks["topup.notify"]
    assert (task.soft_time_limit, task.time_limit) == (5.0, 9.0)


def test_a_lost_worker_counts_against_the_sagas_own_versions_retries(tmp_path, redis, monkeypatch):
    """Celery's worker retries work whose worker was lost while running it (a kill, out of
    memory) up to the task's max_retries, read where no saga's version is at hand: the
    most generous version's, v2's four for notify. Each message is then held to its own
    saga's version: v1's third loss is more than v1's two retries allow."""
    world, app, call, _ = _adapter(tmp_path, redis, monkeypatch)
    assert app.tasks["topup.notify"].max_retries == V2_NOTIFY_RETRY.max_retries == 4
    ctx = TopUp(topup_id=10, user_id=7, amount=300).model_dump()

    call("topup.notify", ctx, saga_id="topup-10", version="2", retries=3)
    call("topup.notify", ctx, saga_id="topup-10", version="1", retries=2)
    assert _ran_for(world, "topup-10") == ["notify@2", "notify@1"]

    lost = TopUp(topup_id=11, user_id=7, amount=300).model_dump()
    with pytest.raises(WorkerLostTooOften, match="lost on 3 attempts; version 1"):
        call("topup.notify", lost, saga_id="topup-11", version="1", retries=3)
    # Not run again: parked, with what its retry needs and its saga's version.
    assert _ran_for(world, "topup-11") == []
    [entry] = world.store.entries(saga_id="topup-11")
    assert (entry["name"], entry["error_class"], entry["version"]) == (
        "notify",
        "WorkerLostTooOften",
        "1",
    )
    assert "retries notify 2 times" in entry["error"]


def test_a_failure_report_is_routed_by_its_sagas_version(adapter):
    world, app, call, _ = adapter
    ctx = TopUp(topup_id=6, user_id=7, amount=5_000)
    with world.db.write() as session:
        saga = SagaLog.create(session, V1, ctx)
    with pytest.raises(TooMuch):
        call("topup.credit", ctx.model_dump(), saga_id=saga, version="1")

    failure = {"workflow": "topup", "version": "1", "saga_id": saga, "name": "credit", "plan": []}
    assert call(STEP_FAILED, failure, saga_id=saga) == "compensating"
    world.settle()
    # v1's undo of credit: debit, then release (never v2's clear_fraud).
    assert [s[1] for s in world.dispatcher.sent if s[0] == "compensate"] == [["debit", "release"]]


def test_a_version_this_worker_does_not_know_is_sent_back_then_dead_lettered(adapter, caplog):
    world, _, call, sent = adapter
    ctx = TopUp(topup_id=7, user_id=7, amount=300)
    with world.db.write() as session:
        saga = SagaLog.create(session, V2, ctx)

    caplog.set_level(logging.WARNING, logger="sagaflow.tasks")
    with pytest.raises(Retry):
        call("topup.credit", ctx.model_dump(), saga_id=saga, version="3", retries=1)
    world.settle()

    # Not run, not guessed: sent again, the same attempt, with how long it has waited.
    assert world.steps(saga)["credit"]["attempts"] == 0 and world.balance() == 0
    [again] = sent.messages
    assert again["retries"] == 1 and again["countdown"] >= 1
    assert again["kwargs"]["version"] == "3"
    assert again["kwargs"]["unknown_version"]["tries"] == 1
    [line] = [r for r in caplog.records if "refusing" in r.getMessage()]
    assert line.levelno == logging.WARNING
    assert "version 3 of workflow topup" in line.getMessage()
    assert "this worker knows: 2, 1" in line.getMessage()
    # Sent back again later: said at INFO only, not one warning per refusal.
    caplog.clear()
    with pytest.raises(Retry):
        call(
            "topup.credit",
            ctx.model_dump(),
            saga_id=saga,
            version="3",
            unknown_version=again["kwargs"]["unknown_version"],
            retries=1,
        )
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert sent.messages[-1]["kwargs"]["unknown_version"]["tries"] == 2

    # Still nobody after the wait: the DLQ, with the reason and the saga's version.
    waited = {"since": time.time() - 601, "tries": 9}
    with pytest.raises(Ignore):
        call(
            "topup.credit",
            ctx.model_dump(),
            saga_id=saga,
            version="3",
            unknown_version=waited,
            retries=1,
        )
    world.settle()
    assert len(sent.messages) == 2  # not sent back again
    [entry] = world.store.entries(saga_id=saga)
    assert "no worker knows version 3 of workflow topup" in entry["error"]
    assert (entry["name"], entry["version"], entry["args"]["ctx"]) == (
        "credit",
        "3",
        ctx.model_dump(),
    )
    assert world.steps(saga)["credit"]["status"] == "dead_lettered"
    assert world.balance() == 0
    # The DLQ's retry, from a process that does not know it either, is refused the same way.
    with pytest.raises(UnknownVersion):
        world.runner.redispatch(entry)


def test_a_failure_report_of_an_unknown_version_is_sent_back_too(adapter):
    world, _, call, sent = adapter
    failure = {"workflow": "topup", "version": "3", "saga_id": "topup-8", "name": "credit"}
    with pytest.raises(Retry):
        call(STEP_FAILED, failure, saga_id="topup-8")
    [again] = sent.messages
    assert again["args"] == (failure,) and again["kwargs"]["unknown_version"]["tries"] == 1
    assert world.dispatcher.sent == []  # nothing routed by a guessed plan
