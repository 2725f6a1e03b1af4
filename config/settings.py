"""Every setting the processes read, from the environment.

Timings and limits have defaults. Where things are (REDIS_URL, each service's
*_DATABASE_URL) has none: a process that needs one and does not have it refuses to start,
naming the setting, rather than quietly use a local file and split the truth. `make run`
sets them all for local development (scripts/run.sh).

Settings are read once per process into an immutable object and passed to whatever needs
them; tests pass their own values through the environment of the processes they start,
never by patching.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from sagaflow import tracing

REPO_ROOT = Path(__file__).resolve().parent.parent
DATABASE_URL_SUFFIX = "_DATABASE_URL"
LOG_FORMATS = ("text", "json")  # app/logs.py
SAGA_MODES = ("orchestration", "choreography")  # sagaflow._choreography.MODES

log = logging.getLogger(__name__)


class SettingsError(ValueError):
    """A setting is missing or wrong; the message names it."""

    setting = True


def _flag(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    redis_url: str = ""
    database_urls: Mapping[str, str] = field(default_factory=dict)
    # The services this process serves (SERVICES=products,balances): it builds only their
    # database engines. A worker serves the queues it consumes.
    services: tuple[str, ...] = ()
    port: int = 8000
    flower_port: int = 5555
    flower_basic_auth: str = "operator:change-me"
    log_level: str = "INFO"
    log_format: str = "text"  # or "json": one object per line (app/logs.py)
    # How an alert tells the operator to run the DLQ CLI: `make run` sets the absolute path
    # of .venv/bin/saga-dlq, so the printed command works from a plain shell.
    cli_command: str = "saga-dlq"
    # Where the token keys live (app/auth/tokens.py): the API reads only the public keys.
    auth_dir: Path = REPO_ROOT / "var" / "auth"

    # Step execution: a soft limit raises inside the step, the hard limit kills it.
    step_soft_time_limit: float = 10.0
    step_time_limit: float = 20.0
    # Celery's autoretry backoff is in whole seconds: delay = random(0, min(max, base * 2**n)).
    step_max_retries: int = 4
    step_retry_backoff: int = 1
    step_retry_backoff_max: int = 30
    step_retry_jitter: bool = True
    # Redis redelivers any task unacknowledged for this long: it is how long the messages a
    # SIGKILLed worker held (running, prefetched, or waiting for their retry) stay idle. It
    # must exceed the longest retry countdown plus the hard time limit, or a waiting retry
    # is delivered a second time; two minutes leaves more than twice that margin.
    broker_visibility_timeout: int = 120
    # How often a worker looks for unacknowledged messages whose visibility timeout passed.
    broker_restore_interval: int = 10

    faults_enabled: bool = False
    faults_spec: str = ""

    dlq_max_attempts: int = 5
    dlq_backoff: float = 5.0
    dlq_backoff_max: float = 300.0
    dlq_poll_interval: float = 1.0
    dlq_lease_seconds: float = 60.0
    dlq_alert_retry_seconds: float = 30.0
    # Resolved DLQ entries are deleted this long after they were resolved (30 days).
    dlq_retention_seconds: float = 30 * 86_400.0
    # A saga that owes work but showed no progress for this long is handed to the DLQ (its
    # message was lost). Longer than the broker's own redelivery (visibility timeout plus
    # restore interval), so the DLQ is the backstop and never races a redelivery.
    saga_stall_seconds: float = 300.0
    saga_stall_check_seconds: float = 30.0
    # Once a saga is final (COMPLETED or FAILED, nothing owed), its markers, kept inputs and
    # fence in Redis expire this soon (sagaflow/_events.py KEYS_GRACE_SECONDS says why an
    # hour): long enough for a late report or a redelivery to find them.
    saga_keys_grace_seconds: float = 3_600.0
    # A dependency that cannot be reached (a service's database, Redis, the broker) is not
    # the work's fault (sagaflow/_dependencies.py): work waits for it with backoff, spending
    # none of its attempts, for at most this long before it goes to the DLQ; one alert
    # goes out per outage once it lasts this long, and one when it is over.
    outage_budget_seconds: float = 1800.0
    outage_alert_seconds: float = 120.0
    # Work of a saga whose workflow version this worker's build does not know is sent back
    # to its queue, spending no attempt, for a worker that knows it; after this long it is
    # dead-lettered, the reason said (sagaflow.celery_app).
    unknown_version_wait_seconds: float = 600.0
    # PostgreSQL connections each process keeps open per database, and how many more a
    # burst may borrow (closed after use): every process of every service shares the
    # server's max_connections.
    db_pool_size: int = 5
    db_max_overflow: int = 10
    # A worker child opens its databases when it starts, before it takes any task (outside
    # every task's time limit): how long the pool waits for a child to come up.
    worker_start_timeout: float = 60.0
    # Celery's task events (task-sent, -received, -started, -succeeded: four Redis
    # publishes per step, and their encoding in the worker) are what Flower shows. Off
    # unless asked for: Flower turns them on in every worker itself, every 5 s while it
    # runs (its --enable_events, on by default), so they cost nothing when nobody watches.
    task_events: bool = False

    # The outbox relay (sagaflow/_outbox.py): how often it looks, how long a claim holds,
    # how many sends before a message is parked in the DLQ.
    outbox_poll_interval: float = 0.2
    # With nothing owed, the relay looks only when a writer whose fast path failed nudges
    # it, or this often (a nudge lost with Redis, a writer that died after its commit: its
    # hold lasts the lease, so looking much more often than that finds nothing sooner).
    outbox_idle_poll_seconds: float = 30.0
    outbox_lease_seconds: float = 30.0
    outbox_max_attempts: int = 10

    # How the saga runs (sagaflow/_choreography.py): a chain sent up front by whoever starts
    # it ("orchestration"), or each service announcing the next ("choreography").
    saga_mode: str = "orchestration"

    # Per-client limits on the API (app/http/limits.py), counted in Redis so every web
    # process and host counts together; the `limits` notation, several joined by ";". Off
    # with RATE_LIMITS_ENABLED=0 (the benchmark's stack).
    rate_limits_enabled: bool = True
    # Requests whose credential is missing or fails, per client address.
    rate_limit_failed_auth: str = "20/minute"
    # POST /orders and POST /coupons/<id>/issue, per signed-in user.
    rate_limit_orders: str = "30/minute;300/hour"
    rate_limit_coupon_requests: str = "10/minute;50/hour"

    slack_webhook_url: str = ""
    slack_bot_token: str = ""
    slack_channel: str = ""
    slack_api_url: str = "https://slack.com/api/"
    slack_timeout: float = 5.0

    # Tracing is switched on by the standard OTEL_* settings (sagaflow/tracing.py). A trace
    # viewer's page for one trace, {trace_id} filled in (the console links to it), e.g.
    # http://localhost:16686/trace/{trace_id} for Jaeger.
    trace_url_template: str = ""

    def database_url(self, service: str) -> str:
        url = self.database_urls.get(service)
        if not url:
            raise SettingsError(
                f"{service.upper()}_DATABASE_URL is not set, and this process serves {service}"
            )
        return url

    def require_redis(self) -> str:
        if not self.redis_url:
            raise SettingsError("REDIS_URL is not set (make run sets it for local development)")
        return self.redis_url

    @property
    def longest_retry_delay(self) -> int:
        return self.step_retry_backoff_max

    def validate(self) -> Settings:
        """Refuse combinations that would silently break delivery guarantees."""
        worst_case = self.longest_retry_delay + self.step_time_limit
        if self.broker_visibility_timeout <= worst_case:
            raise SettingsError(
                f"BROKER_VISIBILITY_TIMEOUT={self.broker_visibility_timeout}s must exceed the "
                f"longest retry delay plus the hard time limit ({worst_case}s): "
                "otherwise Redis delivers a waiting retry a second time"
            )
        if self.saga_stall_seconds <= worst_case:
            raise SettingsError(
                f"SAGA_STALL_SECONDS={self.saga_stall_seconds}s must exceed the longest retry "
                f"delay plus the hard time limit ({worst_case}s), or slow work looks stalled"
            )
        redelivery = self.broker_visibility_timeout + self.broker_restore_interval
        if self.saga_stall_seconds <= redelivery:
            raise SettingsError(
                f"SAGA_STALL_SECONDS={self.saga_stall_seconds}s must exceed the broker's "
                f"redelivery (BROKER_VISIBILITY_TIMEOUT + BROKER_RESTORE_INTERVAL = "
                f"{redelivery}s), or the DLQ re-runs work that Redis is about to redeliver"
            )
        late = redelivery + self.step_time_limit
        if self.saga_keys_grace_seconds <= late:
            raise SettingsError(
                f"SAGA_KEYS_GRACE_SECONDS={self.saga_keys_grace_seconds}s must exceed the "
                f"broker's redelivery plus the hard time limit ({late}s): a message held by a "
                "killed worker must still find the saga's fence and done markers"
            )
        if self.saga_mode not in SAGA_MODES:
            raise SettingsError(
                f"SAGA_MODE={self.saga_mode!r}: it is one of {', '.join(SAGA_MODES)}"
            )
        if self.log_format not in LOG_FORMATS:
            raise SettingsError(
                f"LOG_FORMAT={self.log_format!r}: it is one of {', '.join(LOG_FORMATS)}"
            )
        if self.step_soft_time_limit >= self.step_time_limit:
            raise SettingsError("STEP_SOFT_TIME_LIMIT must be below STEP_TIME_LIMIT")
        if self.trace_url_template and "{trace_id}" not in self.trace_url_template:
            raise SettingsError("TRACE_URL_TEMPLATE must say where the trace id goes: {trace_id}")
        return self

    @staticmethod
    def auth_dir_from_env(env: Mapping[str, str]) -> Path:
        var_dir = Path(env.get("VAR_DIR") or REPO_ROOT / "var")
        return Path(env.get("AUTH_DIR") or var_dir / "auth")

    def with_overrides(self, **changes) -> Settings:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        # Every <SERVICE>_DATABASE_URL set: the services are the workflows' (bootstrap
        # checks SERVICES against them), not a list kept here.
        urls = {
            key.removesuffix(DATABASE_URL_SUFFIX).lower(): value
            for key, value in env.items()
            if key.endswith(DATABASE_URL_SUFFIX) and len(key) > len(DATABASE_URL_SUFFIX) and value
        }
        services = tuple(s.strip() for s in env.get("SERVICES", "").split(",") if s.strip())
        defaults = cls()

        def number(key: str, default, kind=float):
            raw = env.get(key)
            if raw is None or raw == "":
                return default
            try:
                return kind(raw)
            except ValueError as exc:
                raise SettingsError(f"{key}={raw!r} is not a number") from exc

        faults_enabled = _flag(env.get("SAGA_FAULTS_ENABLED"), False)
        faults_spec = env.get("SAGA_FAULTS", "")
        try:
            tracing.check(env)  # the OTEL_* settings, read by the SDK itself
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        if faults_spec and not faults_enabled:
            log.warning(
                "SAGA_FAULTS is set but ignored: set SAGA_FAULTS_ENABLED=1 to inject faults"
            )
            faults_spec = ""

        return cls(
            redis_url=env.get("REDIS_URL") or "",
            database_urls=urls,
            services=services,
            port=number("PORT", defaults.port, int),
            flower_port=number("FLOWER_PORT", defaults.flower_port, int),
            flower_basic_auth=env.get("FLOWER_BASIC_AUTH") or defaults.flower_basic_auth,
            log_level=env.get("LOG_LEVEL") or defaults.log_level,
            log_format=(env.get("LOG_FORMAT") or defaults.log_format).strip().lower(),
            auth_dir=cls.auth_dir_from_env(env),
            cli_command=env.get("SAGA_CLI") or defaults.cli_command,
            step_soft_time_limit=number("STEP_SOFT_TIME_LIMIT", defaults.step_soft_time_limit),
            step_time_limit=number("STEP_TIME_LIMIT", defaults.step_time_limit),
            step_max_retries=number("STEP_MAX_RETRIES", defaults.step_max_retries, int),
            step_retry_backoff=number("STEP_RETRY_BACKOFF", defaults.step_retry_backoff, int),
            step_retry_backoff_max=number(
                "STEP_RETRY_BACKOFF_MAX", defaults.step_retry_backoff_max, int
            ),
            step_retry_jitter=_flag(env.get("STEP_RETRY_JITTER"), defaults.step_retry_jitter),
            broker_visibility_timeout=number(
                "BROKER_VISIBILITY_TIMEOUT", defaults.broker_visibility_timeout, int
            ),
            broker_restore_interval=number(
                "BROKER_RESTORE_INTERVAL", defaults.broker_restore_interval, int
            ),
            faults_enabled=faults_enabled,
            faults_spec=faults_spec,
            dlq_max_attempts=number("DLQ_MAX_ATTEMPTS", defaults.dlq_max_attempts, int),
            dlq_backoff=number("DLQ_BACKOFF", defaults.dlq_backoff),
            dlq_backoff_max=number("DLQ_BACKOFF_MAX", defaults.dlq_backoff_max),
            dlq_poll_interval=number("DLQ_POLL_INTERVAL", defaults.dlq_poll_interval),
            dlq_lease_seconds=number("DLQ_LEASE_SECONDS", defaults.dlq_lease_seconds),
            dlq_retention_seconds=number("DLQ_RETENTION_SECONDS", defaults.dlq_retention_seconds),
            dlq_alert_retry_seconds=number(
                "DLQ_ALERT_RETRY_SECONDS", defaults.dlq_alert_retry_seconds
            ),
            saga_stall_seconds=number("SAGA_STALL_SECONDS", defaults.saga_stall_seconds),
            saga_stall_check_seconds=number(
                "SAGA_STALL_CHECK_SECONDS", defaults.saga_stall_check_seconds
            ),
            saga_keys_grace_seconds=number(
                "SAGA_KEYS_GRACE_SECONDS", defaults.saga_keys_grace_seconds
            ),
            outage_budget_seconds=number("OUTAGE_BUDGET_SECONDS", defaults.outage_budget_seconds),
            outage_alert_seconds=number("OUTAGE_ALERT_SECONDS", defaults.outage_alert_seconds),
            unknown_version_wait_seconds=number(
                "UNKNOWN_VERSION_WAIT_SECONDS", defaults.unknown_version_wait_seconds
            ),
            worker_start_timeout=number("WORKER_START_TIMEOUT", defaults.worker_start_timeout),
            task_events=_flag(env.get("CELERY_TASK_EVENTS"), defaults.task_events),
            db_pool_size=number("DB_POOL_SIZE", defaults.db_pool_size, int),
            db_max_overflow=number("DB_MAX_OVERFLOW", defaults.db_max_overflow, int),
            outbox_poll_interval=number("OUTBOX_POLL_INTERVAL", defaults.outbox_poll_interval),
            outbox_idle_poll_seconds=number(
                "OUTBOX_IDLE_POLL_SECONDS", defaults.outbox_idle_poll_seconds
            ),
            outbox_lease_seconds=number("OUTBOX_LEASE_SECONDS", defaults.outbox_lease_seconds),
            outbox_max_attempts=number("OUTBOX_MAX_ATTEMPTS", defaults.outbox_max_attempts, int),
            saga_mode=(env.get("SAGA_MODE") or defaults.saga_mode).strip().lower(),
            rate_limits_enabled=_flag(env.get("RATE_LIMITS_ENABLED"), defaults.rate_limits_enabled),
            rate_limit_failed_auth=env.get("RATE_LIMIT_FAILED_AUTH")
            or defaults.rate_limit_failed_auth,
            rate_limit_orders=env.get("RATE_LIMIT_ORDERS") or defaults.rate_limit_orders,
            rate_limit_coupon_requests=env.get("RATE_LIMIT_COUPON_REQUESTS")
            or defaults.rate_limit_coupon_requests,
            slack_webhook_url=env.get("SLACK_WEBHOOK_URL", ""),
            slack_bot_token=env.get("SLACK_BOT_TOKEN", ""),
            slack_channel=env.get("SLACK_CHANNEL", ""),
            slack_api_url=env.get("SLACK_API_URL") or defaults.slack_api_url,
            slack_timeout=number("SLACK_TIMEOUT", defaults.slack_timeout),
            trace_url_template=env.get("TRACE_URL_TEMPLATE", "").strip(),
        ).validate()
