"""Tracing (issue 20) on real processes, against a real OTLP/HTTP receiver: one trace per
saga from the POST that asked for it, through the outbox, the relay, every Celery task,
each step, compensation and retry, the DLQ worker's retries and an operator's requeue, in
both saga modes; every span's parent is in the trace (nothing orphaned). And the trace is
one click away: the console and the Slack alert carry its id.

With tracing off, nothing of OpenTelemetry's SDK is loaded (the rules at the end); what
that means for the cost per order is measured in the bench (`make bench`)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import urllib.request

import pytest

from app.order_saga import ORDER
from config.settings import Settings, SettingsError
from sagaflow import tracing
from tests.inspect_view import eid as entry_id
from tests.otlp_server import OtlpReceiver
from tests.slack_server import SlackServer
from tests.stack import Stack
from tests.support import REPO_ROOT, http, patient, wait_for

MODES = ["orchestration", "choreography"]
SERVER = 2  # OTLP's SpanKind: the web request's span
VIEWER = "http://traces.example/trace/{trace_id}"


@pytest.fixture(scope="module")
def slack():
    with SlackServer() as server:
        yield server


@pytest.fixture(scope="module")
def traced(primary_backend, tmp_path_factory, slack):
    """mode -> a stack whose every process sends its spans to a receiver of its own (saga
    ids repeat from one stack to the next), its API, and the receiver."""
    made: dict[str, tuple[Stack, object, OtlpReceiver]] = {}
    undo = contextlib.ExitStack()

    def in_mode(mode: str):
        if mode not in made:
            otlp = undo.enter_context(OtlpReceiver())
            stack = Stack(
                primary_backend,
                tmp_path_factory.mktemp(f"traced-{mode}"),
                SAGA_MODE=mode,
                OTEL_TRACES_EXPORTER="otlp",
                OTEL_EXPORTER_OTLP_ENDPOINT=otlp.endpoint,
                OTEL_BSP_SCHEDULE_DELAY="100",  # ms: spans reach the receiver at once
                TRACE_URL_TEMPLATE=VIEWER,
                LOG_FORMAT="json",
                SLACK_WEBHOOK_URL=slack.webhook_url,
            )
            undo.callback(stack.stop)
            stack.start()
            made[mode] = (stack, stack.api(), otlp)
        return made[mode]

    with undo:
        yield in_mode


def _order(stack, api, user: int, product: int, quantity: int = 1) -> int:
    status, answer = http(
        "POST",
        api.url + "/orders",
        {"items": [{"product_id": product, "quantity": quantity}]},
        stack.credentials.customer(user),
    )
    assert status == 202, answer
    return answer["order_id"]


def _whole_trace(otlp: OtlpReceiver, saga_id: str, complete) -> list:
    """The trace of `saga_id` once `complete(spans)` holds and every span's parent has
    arrived (the processes export on their own schedules)."""

    def found():
        ours = [s for s in otlp.snapshot() if s["saga.id"] == saga_id]
        if not ours:
            return None
        spans = otlp.trace(ours[0].trace_id)
        ids = {s.span_id for s in spans}
        if all(not s.parent_id or s.parent_id in ids for s in spans) and complete(spans):
            return spans
        return None

    return wait_for(found, 60, what=f"the whole trace of {saga_id}")


def _of(spans, **attributes) -> list:
    return [s for s in spans if all(s[f"saga.{k}"] == v for k, v in attributes.items())]


def _ancestors(spans, span) -> list:
    by_id = {s.span_id: s for s in spans}
    found = []
    while span.parent_id:
        span = by_id[span.parent_id]
        found.append(span)
    return found


def _assert_one_tree_from_the_post(spans, saga_id: str) -> None:
    assert len({s.trace_id for s in spans}) == 1
    roots = [s for s in spans if not s.parent_id]
    # One root: the POST that asked for the saga; everything else hangs below it.
    assert [(r.name, r.kind, r.service) for r in roots] == [("POST /orders", SERVER, "saga-web")]
    start = next(s for s in spans if s.name == "saga.start order")
    assert start["saga.id"] == saga_id and start.parent_id == roots[0].span_id
    assert any(s.name.startswith("outbox.send") for s in spans)
    # Every saga span names its saga; none of another saga is in this trace.
    assert {s["saga.id"] for s in spans if s["saga.id"]} == {saga_id}


@pytest.mark.parametrize("mode", MODES)
def test_a_completed_order_is_one_trace_from_its_post_through_every_step(traced, mode):
    stack, api, otlp = traced(mode)
    worker = stack.worker()
    try:
        user, product = stack.shop.new_user(balance=1_000), stack.shop.product()
        order_id = _order(stack, api, user, product)
        assert stack.shop.wait_order(order_id)["status"] == "COMPLETED"
        saga_id = f"order-{order_id}"
        spans = _whole_trace(
            otlp,
            saga_id,
            lambda spans: all(
                _of(spans, step=name, outcome="succeeded") for name in ORDER.step_names
            ),
        )
    finally:
        worker.stop()

    _assert_one_tree_from_the_post(spans, saga_id)
    for name in ORDER.step_names:
        (step,) = _of(spans, step=name)  # one attempt each, each in the trace once
        assert step["saga.workflow"] == "order" and step["saga.attempt"] == 1
        assert step["saga.kind"] == ORDER.kind_of(name) and step.service == "saga-worker"
        assert step["saga.version"] == ORDER.version
    # Each step runs after (below) the one before it: the chain, or the announcement.
    steps = [_of(spans, step=name)[0] for name in ORDER.step_names]
    for earlier, later in zip(steps, steps[1:], strict=False):
        assert earlier in _ancestors(spans, later), (earlier.name, later.name)
    assert {"saga-web", "saga-worker"} <= {s.service for s in spans}

    trace_id = spans[0].trace_id
    page = _console_page(stack, api, order_id)
    assert trace_id in page and VIEWER.format(trace_id=trace_id) in page
    # Every JSON log line a step of this saga wrote carries the saga's trace id.
    lines = [r for r in _json_lines(stack) if r.get("saga_id") == saga_id and r.get("task_id")]
    assert {r["step"] for r in lines} >= set(ORDER.step_names), lines
    assert {r.get("trace_id") for r in lines} == {trace_id}


@pytest.mark.parametrize("mode", MODES)
def test_a_business_failure_and_its_compensations_read_as_one_tree(traced, mode):
    stack, api, otlp = traced(mode)
    worker = stack.worker()
    try:
        # Too little money: use_balance refuses, the stock and the order are undone.
        user, product = stack.shop.new_user(balance=10), stack.shop.product(price=100)
        order_id = _order(stack, api, user, product)
        assert stack.shop.wait_order(order_id)["status"] == "FAILED"
        saga_id = f"order-{order_id}"
        undo = ORDER.compensations_for("use_balance")
        spans = _whole_trace(
            otlp,
            saga_id,
            lambda spans: all(_of(spans, step=name, outcome="succeeded") for name in undo),
        )
    finally:
        worker.stop()

    _assert_one_tree_from_the_post(spans, saga_id)
    (failed,) = _of(spans, step="use_balance")
    assert (failed["saga.outcome"], failed["saga.failure_class"]) == ("failed", "business")
    assert failed.status == 2  # ERROR
    for name in undo:
        (compensation,) = _of(spans, step=name)
        assert compensation["saga.kind"] == "compensation"
        # The compensation hangs below the failure that caused it.
        assert failed in _ancestors(spans, compensation), name
    assert not _of(spans, step="use_coupon") and not _of(spans, step="publish_order")


@pytest.mark.parametrize("mode", MODES)
def test_dlq_retries_and_an_operators_requeue_join_the_sagas_trace(traced, slack, mode):
    stack, api, otlp = traced(mode)
    slack.messages.clear()
    worker = stack.worker(faults="use_balance:timeout")
    dlq = stack.dlq_worker(faults="use_balance:timeout")
    try:
        user, product = stack.shop.new_user(balance=1_000), stack.shop.product()
        order_id = _order(stack, api, user, product)
        saga_id = f"order-{order_id}"
        eid = entry_id(order_id, "use_balance")
        wait_for(lambda: any(saga_id in t for t in slack.texts()), 90, what="a Slack alert")
    finally:
        dlq.stop()
        worker.stop()

    worker = stack.worker()
    try:
        done = stack.cli("requeue", eid)
        assert done.returncode == 0, done.stderr
        assert stack.shop.wait_order(order_id, ("COMPLETED",))["status"] == "COMPLETED"
        spans = _whole_trace(
            otlp,
            saga_id,
            lambda spans: (
                _of(spans, step="publish_order", outcome="succeeded")
                and any(s.name == "dlq.requeue" for s in spans)
            ),
        )
    finally:
        worker.stop()

    _assert_one_tree_from_the_post(spans, saga_id)
    attempts = _of(spans, step="use_balance")
    timeouts = [s for s in attempts if s["saga.failure_class"] == "timeout"]
    # The worker's own tries (retrying, then parked) and the DLQ worker's, all timed out.
    assert {s["saga.outcome"] for s in timeouts} >= {"retrying", "dead_lettered"}
    retries = [s for s in spans if s.name == "dlq.retry"]
    assert retries and {s.service for s in retries} == {"saga-dlq-worker"}
    assert all(s["dlq.entry"] == eid for s in retries)
    (requeue,) = [s for s in spans if s.name == "dlq.requeue"]
    assert requeue.service == "saga-cli" and requeue["saga.operator"]
    # The attempt that succeeded was sent by the operator's requeue.
    (succeeded,) = [s for s in attempts if s["saga.outcome"] == "succeeded"]
    assert requeue in _ancestors(spans, succeeded)

    trace_id = spans[0].trace_id
    alert = next(t for t in slack.texts() if saga_id in t)
    assert f"Trace: <{VIEWER.format(trace_id=trace_id)}|{trace_id}>" in alert


def _json_lines(stack) -> list[dict]:
    records = []
    for path in sorted((stack.workdir / "logs").glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):  # Celery prints its "Warm shutdown" line as text
                records.append(json.loads(line))
    return records


def _console_page(stack, api, order_id: int) -> str:
    token = stack.credentials.operator["Authorization"].removeprefix("Bearer ")
    request = urllib.request.Request(
        f"{api.url}/console/orders/{order_id}", headers={"Cookie": f"console_token={token}"}
    )
    with urllib.request.urlopen(request, timeout=patient(30)) as response:
        assert response.status == 200
        return response.read().decode()


# --- off by default, and free when off -----------------------------------------------------


@pytest.mark.rules
@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
    ],
)
def test_tracing_is_on_only_when_the_otel_settings_ask_for_it(env, on):
    assert tracing.wanted(env) is on


@pytest.mark.rules
@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER='zipkin'"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_PROTOCOL='http/json'",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "opentelemetry-exporter-otlp-proto-grpc",
        ),
        ({"TRACE_URL_TEMPLATE": "http://jaeger/trace/"}, "TRACE_URL_TEMPLATE"),
    ],
)
def test_a_tracing_setting_that_cannot_work_is_refused_by_name(env, named):
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0", **env})
    assert named in str(refused.value)


@pytest.mark.rules
def test_without_tracing_the_carriers_are_empty_and_spans_do_nothing():
    assert not tracing.enabled()
    assert tracing.carrier() == {} and tracing.traceparent() == ""
    assert tracing.current_trace_id() == ""
    with tracing.span("x", id="order-1") as span, tracing.continued("00-ab-cd-01", "y") as other:
        tracing.note(outcome="succeeded")
    assert span is None and other is None


@pytest.mark.rules
def test_a_trace_id_is_read_from_its_traceparent_and_fills_the_viewer_link():
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert tracing.trace_id_of(parent) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert tracing.trace_id_of("") == tracing.trace_id_of("garbage") == ""
    assert tracing.trace_id_of("00-" + "0" * 32 + "-00f067aa0ba902b7-01") == ""  # invalid id
    assert tracing.trace_url(VIEWER, "abc") == "http://traces.example/trace/abc"
    assert tracing.trace_url("", "abc") == "" and tracing.trace_url(VIEWER, "") == ""


def test_a_process_with_tracing_off_builds_no_exporter_and_loads_no_tracing(tmp_path):
    # What every process does at its start (a worker child, the relay, the web worker),
    # in a process of its own with the OTEL_* settings unset. (redis-py imports
    # OpenTelemetry's metrics SDK when it is installed, for its own opt-in metrics: nothing
    # of tracing, no provider, no exporter, no instrumentation.)
    script = (
        "import sys\n"
        "from config.settings import Settings\n"
        "from tasks.celery_app import create_celery\n"
        "from sagaflow import tracing\n"
        "settings = Settings.from_env()\n"
        "create_celery(settings)\n"
        "on = tracing.configure('worker')\n"
        "tracing_parts = ('opentelemetry.sdk.trace', 'opentelemetry.exporter',"
        " 'opentelemetry.instrumentation')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(tracing_parts))\n"
        "print(on, tracing.provider(), loaded)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["REDIS_URL"] = "redis://127.0.0.1:1/0"
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=patient(60),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "None", "[]"], done.stdout
