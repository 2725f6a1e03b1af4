"""The composition root: builds every real collaborator from Settings, nothing at import.

A process declares the services it serves and gets only their database engines: a
products worker holds the products database and Redis, nothing else, and refuses to start
without PRODUCTS_DATABASE_URL.
"""

from __future__ import annotations

import logging

import redis
from tenacity import Retrying, stop_after_delay, wait_exponential

from app import services as service_modules
from app.workflows import HOOKS, SERVICES, WORKFLOWS
from config.settings import Settings, SettingsError
from sagaflow import (
    HOLD_KEY,
    LIVE_KEY,
    NO_FAULTS,
    Database,
    FaultInjector,
    LiveFaultInjector,
    Runner,
    Runtime,
    SagaLog,
    error_text,
    home_of,
    open_database,
    parse_faults,
)
from sagaflow.metrics import MetricsRecorder

log = logging.getLogger(__name__)


# The service whose database keeps the saga log: the workflows' home (Workflow.home).
HOME = home_of(WORKFLOWS)


def check_served(served: tuple[str, ...]) -> None:
    unknown = [s for s in served if s not in SERVICES]
    if unknown:
        raise SettingsError(
            f"SERVICES names {', '.join(unknown)}: the services are {', '.join(SERVICES)}"
        )


class NotServed(RuntimeError):
    """Work for a service this process does not serve (a misrouted message)."""


class Services:
    """The services one process serves, each on its own database, plus Redis."""

    def __init__(self, settings: Settings, served: tuple[str, ...]):
        check_served(served)
        self.settings, self.served = settings, tuple(served)
        self.redis = redis.Redis.from_url(settings.require_redis(), health_check_interval=30)
        # Every URL is checked before any engine is built: a missing one is named at once.
        urls = {name: settings.database_url(name) for name in self.served}
        self.databases: dict[str, Database] = {
            name: open_database(name, url, settings.db_pool_size, settings.db_max_overflow)
            for name, url in urls.items()
        }
        # Every service's interfaces by name; those of a service not served here are None,
        # so that reaching one says what went wrong rather than AttributeError.
        self._services = {}
        for service in SERVICES:
            db = self.databases.get(service)
            for name, interface in service_modules.module(service).INTERFACES.items():
                self._services[name] = db and interface(db)

    def __getattr__(self, name: str):
        services = self.__dict__.get("_services", {})
        if name not in services:
            raise AttributeError(name)
        found = services[name]
        if found is None:
            raise NotServed(
                f"this process does not serve the {name} service (it serves "
                f"{', '.join(self.served) or 'none'}): was the message sent to the wrong queue?"
            )
        return found

    def dispose(self) -> None:
        for db in self.databases.values():
            db.dispose()
        self.redis.close()


def warm_up(services: Services, within: float) -> None:
    """Open one connection to Redis and to each database the process serves, waiting up
    to `within` seconds for each: a worker child does this as it starts, so its first
    task does not pay for (or time out on) a slow first connection. A dependency still not
    answering is only logged: the work that needs it waits for it (dependencies.py)."""
    checks = {"Redis": services.redis.ping}
    checks.update({f"the {name} database": db.ping for name, db in services.databases.items()})
    for what, check in checks.items():
        try:
            for attempt in Retrying(
                stop=stop_after_delay(within),
                wait=wait_exponential(multiplier=0.2, max=2),
                reraise=True,
            ):
                with attempt:
                    check()
        except Exception as exc:
            log.warning("%s does not answer yet (%s); tasks wait for it", what, error_text(exc))


def fault_names() -> list[str]:
    """What SAGA_FAULTS may name: every step and compensation, and the API's saga start."""
    # Every version's: a step an earlier version still in flight has can be drilled too.
    plans = [plan for wf in WORKFLOWS.values() for plan in wf.versions.values()]
    known = list(dict.fromkeys(n for p in plans for n in p.step_names + p.compensation_names))
    known.append("start_saga")  # the API, between an order's commit and its saga's start
    return known


def faults_from(settings: Settings, client) -> FaultInjector:
    if not settings.faults_enabled:
        return NO_FAULTS
    log.warning("fault injection is ON: %r (or the live spec in Redis)", settings.faults_spec)
    known = fault_names()

    def read_live() -> str | None:
        spec = client.get(LIVE_KEY)
        return None if spec is None else spec.decode()

    return LiveFaultInjector(
        parse_faults(settings.faults_spec, known),
        client.incr,
        overrun=settings.step_soft_time_limit + 1,
        read_live=read_live,
        known=known,
        held=lambda: bool(client.exists(HOLD_KEY)),
    )


def build_runtime(settings: Settings, dispatcher, served: tuple[str, ...] = ()) -> Runtime:
    """The sagaflow runtime of a process that serves `served` (none: it only routes and
    parks): its databases and Redis, the shop's workflows, hooks and outboxes."""
    services = Services(settings, served)
    return Runtime(
        WORKFLOWS,
        databases=services.databases,
        outboxes=OUTBOXES,
        redis=services.redis,
        services=services,
        dispatcher=dispatcher,
        settings=settings,
        hooks=HOOKS,
        faults=faults_from(settings, services.redis),
        metrics=MetricsRecorder(services.redis),
        name=",".join(served),
    )


def build_runner(settings: Settings, dispatcher, served: tuple[str, ...] = ()) -> Runner:
    """What a worker's tasks run (sagaflow.celery_app.install builds one per pool child)."""
    return build_runtime(settings, dispatcher, served).runner


# Each service's outbox table in its own database. Orders sends saga starts, the data
# platform its stream events; in choreography every service sends its steps' events.
OUTBOXES = {service: service_modules.module(service).Outbox for service in SERVICES}


def build_saga_log(services: Services) -> SagaLog:
    """The saga log alone, for a process that reads it and runs nothing (the CLI)."""
    return SagaLog(services.databases[HOME], WORKFLOWS)
