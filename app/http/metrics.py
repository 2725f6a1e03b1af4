"""GET /metrics: the sagas' Prometheus metrics (sagaflow/metrics.py), for an operator's
token (a Prometheus job sends it with `authorization: {credentials_file: ...}`)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from app.auth import OPERATOR
from app.bootstrap import HOME
from app.http.access import allow
from sagaflow.dlq.store import DeadLetterStore
from sagaflow.metrics import SagaCollector

bp = Blueprint("metrics", __name__)


def _registry() -> CollectorRegistry:
    registry = current_app.extensions.get("metrics_registry")
    if registry is None:
        services = current_app.extensions["services"]
        store = DeadLetterStore(services.redis, lambda attempts: 0)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(SagaCollector(services.redis, store, services.databases[HOME]))
        current_app.extensions["metrics_registry"] = registry
    return registry


@bp.get("/metrics")
@allow(OPERATOR)
def metrics():
    return Response(generate_latest(_registry()), mimetype=CONTENT_TYPE_LATEST)
