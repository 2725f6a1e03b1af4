"""OpenTelemetry tracing: one trace per saga, off by default and free when off.

Switched on by the standard settings, read from the environment as every OpenTelemetry
SDK reads them: `OTEL_TRACES_EXPORTER` (otlp or console) or an OTLP endpoint
(`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), with
`OTEL_EXPORTER_OTLP_PROTOCOL` (http/protobuf, or grpc when its exporter is installed),
`OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*` and the rest as the SDK
documents them. `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` keeps it off.

Off, nothing of OpenTelemetry's tracing is imported (no provider, no exporter, no
instrumentation) and every call here returns at its first line:
the bench's cost per order does not move. On, each process builds one tracer provider
with a batching exporter, and the Celery instrumentation (opentelemetry-instrumentation-
celery) carries the context in every task message's headers (W3C `traceparent`): a chain's
next step, a retry and a link_error callback are children of the task that sent them.
What Celery does not carry, sagaflow does with `carrier()`: the saga's start and each
outbox row (so a message the relay sends after a crash still joins its trace), each DLQ
entry (its retries and an operator's requeue join the trace of the work that failed), and
the saga log row (an operator's cancel joins the saga's trace).

Span attributes: saga.id, saga.workflow, saga.version, saga.step, saga.kind (step,
compensation, after_pivot), saga.attempt, saga.outcome (succeeded, failed, retrying,
dead_lettered, ignored...) and saga.failure_class (business, timeout, retryable,
dependency, error), dlq.entry for DLQ work.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

log = logging.getLogger("sagaflow.tracing")

TRACEPARENT = "traceparent"
# Where sagaflow keeps a context in the JSON it writes (outbox payloads).
TRACE_KEY = "trace"

_NOTHING: nullcontext[None] = nullcontext()
_lock = threading.Lock()
_tracer: Any = None  # the process's tracer once configure() built one
_pid: int | None = None  # the process it was built in (a forked child builds its own)
_provider: Any = None


def wanted(env: Mapping[str, str] | None = None) -> bool:
    """Whether the OTEL_* settings ask for traces."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(
        exporter
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    )


def enabled() -> bool:
    return _tracer is not None


def provider() -> Any:
    """The process's tracer provider (None when off), for other instrumentations."""
    return _provider


def configure(role: str, env: Mapping[str, str] | None = None) -> bool:
    """Build this process's tracer provider and exporter and instrument Celery, if the
    OTEL_* settings ask for it; True when tracing is on. `role` names the process (web,
    worker, relay, ...): the service name unless OTEL_SERVICE_NAME says otherwise.
    Called again in a forked child, it builds the child's own (a parent's exporter thread
    does not survive a fork)."""
    global _tracer, _pid, _provider
    env = os.environ if env is None else env
    if not wanted(env):
        return False
    with _lock:
        if _tracer is not None and _pid == os.getpid():
            return True
        from opentelemetry import trace
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create(
            {
                "service.name": env.get("OTEL_SERVICE_NAME") or f"saga-{role}",
                "sagaflow.role": role,
            }
        )
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(_exporter(env)))
        # The global provider can be set once per process: a child forked after its parent
        # set one keeps the parent's global, and this provider is handed to each
        # instrumentation explicitly instead.
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            trace.set_tracer_provider(provider)
        _provider = provider
        instrumentor = CeleryInstrumentor()
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
        instrumentor.instrument(tracer_provider=provider)
        _tracer, _pid = provider.get_tracer("sagaflow"), os.getpid()
        log.info("tracing on: spans of %s sent to %s", role, _destination(env))
        return True


def _choice(env: Mapping[str, str]) -> str:
    """Which exporter the settings name: "console", "otlp-http" or "otlp-grpc"."""
    kind = env.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
    if kind == "console":
        return kind
    if kind != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={kind!r}: sagaflow sends otlp, console or none")
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol == "grpc":
        if importlib.util.find_spec("opentelemetry.exporter.otlp.proto.grpc") is None:
            raise ValueError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs opentelemetry-exporter-otlp-proto-grpc"
                " installed; http/protobuf needs nothing more"
            )
        return "otlp-grpc"
    if protocol != "http/protobuf":
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: http/protobuf or grpc")
    return "otlp-http"


def check(env: Mapping[str, str] | None = None) -> None:
    """Raise ValueError, naming the setting, if the OTEL_* settings ask for something this
    cannot do; a process calls it with its other settings, before it starts."""
    env = os.environ if env is None else env
    if wanted(env):
        _choice(env)


def _exporter(env: Mapping[str, str]) -> Any:
    # Each reads its endpoint, headers (a collector's token) and timeout from OTEL_*.
    choice = _choice(env)
    if choice == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if choice == "otlp-grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def _destination(env: Mapping[str, str]) -> str:
    """Where spans go, for the log line: the collector's address without credentials."""
    url = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or "the default collector"
    )
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}" if parts.hostname else url


# --- spans ----------------------------------------------------------------------------


def _attributes(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k if "." in k else f"saga.{k}": v for k, v in fields.items() if v is not None and v != ""
    }


def span(name: str, **fields: Any) -> Any:
    """A span around the block, child of the current one; fields become saga.* attributes.
    Off: a shared do-nothing context."""
    if _tracer is None:
        return _NOTHING
    return _tracer.start_as_current_span(name, attributes=_attributes(fields))


@contextmanager
def _continued(parent: Any, name: str, fields: Mapping[str, Any]) -> Iterator[Any]:
    from opentelemetry import context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    ctx = TraceContextTextMapPropagator().extract(parent) if parent else None
    token = context.attach(ctx) if ctx is not None else None
    try:
        with _tracer.start_as_current_span(name, attributes=_attributes(fields)) as current:
            yield current
    finally:
        if token is not None:
            context.detach(token)


def continued(parent: Mapping[str, str] | str | None, name: str, **fields: Any) -> Any:
    """A span around the block whose parent is the context `parent` carried (a carrier
    dict, or a bare traceparent): work resumed elsewhere joins the trace it came from."""
    if _tracer is None:
        return _NOTHING
    if isinstance(parent, str):
        parent = {TRACEPARENT: parent}
    return _continued(parent, name, dict(fields))


def carrier() -> dict[str, str]:
    """The current context as W3C headers ({} when off or outside a trace)."""
    if _tracer is None:
        return {}
    from opentelemetry.propagate import inject

    found: dict[str, str] = {}
    inject(found)
    return found


def traceparent() -> str:
    return carrier().get(TRACEPARENT, "")


def note(**fields: Any) -> None:
    """Add saga.* attributes to the current span (the task's, the step's)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(_attributes(fields))


def failed(exc: BaseException, **fields: Any) -> None:
    """The current span ends in an error: its exception and attributes (outcome, class)."""
    if _tracer is None:
        return
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    current = trace.get_current_span()
    current.set_attributes(_attributes(fields))
    current.record_exception(exc)
    current.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:200]))


def current_trace_id() -> str:
    """The current trace id (32 hex digits), "" when off or outside a trace."""
    if _tracer is None:
        return ""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


def trace_id_of(parent: str | None) -> str:
    """The trace id in a W3C traceparent ("00-<trace id>-<span id>-<flags>"), or ""."""
    parts = (parent or "").split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
        return parts[1]
    return ""


def trace_url(template: str, trace_id: str) -> str:
    """A trace viewer's page of one trace: TRACE_URL_TEMPLATE with {trace_id} filled in."""
    if not (template and trace_id):
        return ""
    return template.replace("{trace_id}", trace_id)


def flush(timeout_millis: int = 5000) -> None:
    """Send what is batched (a process about to exit)."""
    if _provider is None:
        return
    _provider.force_flush(timeout_millis)
