"""The composition root: builds every real collaborator from Settings, nothing at import.

A process declares the services it serves and gets only their database engines: a
products worker holds the products database and Redis, nothing else, and refuses to start
without PRODUCTS_DATABASE_URL.
"""

from __future__ import annotations

import logging
import socket

import redis
from tenacity import Retrying, stop_after_delay, wait_exponential

from app import services as service_modules
from app.db import Database, open_database
from app.order_saga import HOOKS, SERVICES, WORKFLOWS
from config.settings import Settings, SettingsError
from sagaflow import EventLog, Projector, Runner, SagaLog
from sagaflow.choreography import CHOREOGRAPHY, Choreography
from sagaflow.dlq.store import DeadLetterStore
from sagaflow.errors import error_text
from sagaflow.faults import LIVE_KEY, NO_FAULTS, FaultInjector, LiveFaultInjector, parse_faults
from sagaflow.metrics import MetricsRecorder
from sagaflow.outbox import AfterCommit, Outbox, Relay, Wakeup, sender

log = logging.getLogger(__name__)


def _home() -> str:
    # Each workflow names its home (the service whose database keeps its saga log). The
    # saga log, its projector and its lock are one per process for now, so the workflows
    # must agree on it.
    homes = {wf.home for wf in WORKFLOWS.values()}
    if len(homes) != 1:
        raise SettingsError(f"the workflows must share one home service, not {sorted(homes)}")
    return homes.pop()


HOME = _home()


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


def dlq_backoff(settings: Settings):
    def backoff(attempts: int) -> float:
        return min(settings.dlq_backoff_max, settings.dlq_backoff * (2**attempts))

    return backoff


def fault_names() -> list[str]:
    """What SAGA_FAULTS may name: every step and compensation, and the API's saga start."""
    known = [n for wf in WORKFLOWS.values() for n in wf.step_names + wf.compensation_names]
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
    )


def build_runner(settings: Settings, dispatcher, served: tuple[str, ...] = ()) -> Runner:
    """The Runner of a process that serves `served` (none: it only routes and parks). In
    choreography, the work of each service it serves announces the next through that
    service's outbox."""
    services = Services(settings, served)
    client = services.redis
    runner = Runner(
        WORKFLOWS,
        services,
        EventLog(client),
        DeadLetterStore(client, dlq_backoff(settings)),
        dispatcher,
        faults_from(settings, client),
        worker=f"{socket.gethostname()}:{','.join(served) or '-'}",
        outage_budget=settings.outage_budget_seconds,
    )
    outboxes = build_outboxes(services, settings)
    if outboxes:
        relay = relay_for(runner, outboxes, settings)
        # The work sends what it writes to its service's outbox (the data platform's
        # stream event) itself, right after it succeeded: the relay is the fallback.
        runner.after_commit = AfterCommit(relay)
        if settings.saga_mode == CHOREOGRAPHY:
            runner.announcer = Choreography({o.service: o for o in outboxes}, relay)
    return runner


# Each service's outbox table in its own database. Orders sends saga starts, the data
# platform its stream events; in choreography every service sends its steps' events.
OUTBOXES = {service: service_modules.module(service).Outbox for service in SERVICES}


def build_outboxes(services: Services, settings: Settings) -> list[Outbox]:
    return [
        Outbox(name, services.databases[name], table, settings.outbox_lease_seconds)
        for name, table in OUTBOXES.items()
        if name in services.databases
    ]


def build_relay(runner: Runner, settings: Settings) -> Relay:
    return relay_for(runner, build_outboxes(runner.deps, settings), settings)


def relay_for(runner: Runner, outboxes: list[Outbox], settings: Settings) -> Relay:
    return Relay(
        outboxes,
        sender(runner),
        lambda outbox, row, error: runner.park_message(outbox.service, row, error),
        max_attempts=settings.outbox_max_attempts,
        poll=settings.outbox_poll_interval,
        wakeup=Wakeup(runner.events.redis),
        idle_poll=settings.outbox_idle_poll_seconds,
    )


def build_saga_log(services: Services) -> SagaLog:
    return SagaLog(services.databases[HOME], WORKFLOWS)


def build_projector(services: Services) -> Projector:
    recorder = MetricsRecorder(services.redis)
    return Projector(services.databases[HOME], services.redis, WORKFLOWS, HOOKS, recorder)
