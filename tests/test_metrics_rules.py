"""The metrics recorder's rules, in-process against a real Redis: increments of many
batches go to Redis together (a field once for many orders, not fifteen per step of each),
a batch that failed is not counted, and what the collector serves is Prometheus's
cumulative histogram, also over what an older version stored."""

from __future__ import annotations

import json

import pytest

from sagaflow._events import Event, Phase
from sagaflow.metrics import BUCKETS, KEY, MetricsRecorder, SagaCollector, _field
from tests.test_runtime_rules import World

# The rules layer: in-process, no subprocess (`make test-fast`).
pytestmark = pytest.mark.rules


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def attempt(recorder: MetricsRecorder, saga: str, seconds: float) -> None:
    recorder.event("topup", "step", Event(saga, "topup", "credit", Phase.STARTED, at=100.0))
    recorder.event(
        "topup", "step", Event(saga, "topup", "credit", Phase.SUCCEEDED, at=100.0 + seconds)
    )


def histogram(world: World) -> dict:
    stored: dict[str, list] = {}
    for raw_field, raw_value in world.redis.hgetall(KEY).items():
        name, labels = json.loads(raw_field)
        stored.setdefault(name, []).append((dict(labels), float(raw_value)))
    collector = SagaCollector(world.redis, world.store, world.db)
    [family] = list(collector._histograms(stored))
    return {
        (s.name.rsplit("_", 1)[-1], s.labels.get("le")): s.value
        for s in family.samples
        if s.labels.get("step") == "credit"
    }


def test_many_batches_reach_redis_together_and_add_up(tmp_path, redis):
    world = World(tmp_path, redis)
    clock = Clock()
    recorder = MetricsRecorder(world.redis, flush_every=1.0, clock=clock)

    for order in range(50):  # fifty batches within one second
        attempt(recorder, f"topup-{order}", 0.02 if order % 2 else 0.3)
        recorder.flush()
    assert world.redis.hlen(KEY) == 0  # not yet due
    attempt(recorder, "topup-failed", 0.02)
    recorder.discard()  # its batch was rolled back: it is read and counted again later

    clock.now = 1.5
    recorder.flush()
    seen = histogram(world)

    assert world.redis.hlen(KEY) == 3  # two slots and the sum, for fifty orders
    assert seen[("bucket", "0.025")] == 25 and seen[("bucket", "0.25")] == 25
    assert seen[("bucket", "0.5")] == 50 and seen[("bucket", "+Inf")] == 50
    assert seen[("count", None)] == 50
    assert abs(seen[("sum", None)] - (25 * 0.02 + 25 * 0.3)) < 1e-6


def test_cumulative_buckets_an_older_version_stored_still_count(tmp_path, redis):
    world = World(tmp_path, redis)
    labels = {"workflow": "topup", "step": "credit", "kind": "step", "outcome": "ok"}
    name = "sagaflow_step_duration_seconds"
    for bound in [*BUCKETS[2:], "+Inf"]:  # one old observation of 0.02 s, cumulative
        world.redis.hincrbyfloat(KEY, _field(f"{name}_bucket", le=str(bound), **labels), 1)
    world.redis.hincrbyfloat(KEY, _field(f"{name}_sum", **labels), 0.02)
    recorder = MetricsRecorder(world.redis, flush_every=0)
    attempt(recorder, "topup-1", 0.3)
    recorder.flush()

    seen = histogram(world)

    assert seen[("bucket", "0.01")] == 0 and seen[("bucket", "0.025")] == 1
    assert seen[("bucket", "0.5")] == 2 and seen[("count", None)] == 2


def test_sagas_in_flight_are_counted_by_the_version_they_started_on(tmp_path, redis):
    """An operator retires an old version once its gauge reads zero."""
    import dataclasses

    from sagaflow import SagaLog
    from tests.test_runtime_rules import TOPUP, TopUp

    world = World(tmp_path, redis)
    older = dataclasses.replace(TOPUP, version="1")
    with world.db.write() as session:
        SagaLog.create(session, older, TopUp(topup_id=101, user_id=7, amount=10))
        SagaLog.create(session, older, TopUp(topup_id=102, user_id=7, amount=10))
        SagaLog.create(session, TOPUP, TopUp(topup_id=103, user_id=7, amount=10))
    world.start(amount=20)  # finished: no longer in flight

    collector = SagaCollector(world.redis, world.store, world.db)
    [gauge] = [m for m in collector.collect() if m.name == "sagaflow_sagas_in_flight"]
    counted = {(s.labels["workflow"], s.labels["version"]): s.value for s in gauge.samples}
    assert counted == {("topup", "1"): 2, ("topup", TOPUP.version): 1}
    assert world.log.timeline("topup-101")["version"] == "1"
