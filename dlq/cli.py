"""The operator's CLI for the dead-letter queue: `python -m dlq --help` (or `saga-dlq`).

The commands come from the saga runtime (sagaflow/dlq/cli.py); this wires them to the
shop: Redis, the order workflow, and the order service's database for the timeline.
Exit codes: 0 done; 1 the work failed again or the action is refused; 2 bad usage; 3 no
such entry; 4 Redis or a database could not be used.
"""

from __future__ import annotations

import getpass
from functools import cached_property

from sagaflow.dlq.cli import Unusable, build_cli, check_redis_url, run_cli

PROG = "saga-dlq"


class Context:
    """Builds what a command needs only when it needs it: `list` needs Redis only."""

    prog = PROG

    @cached_property
    def settings(self):
        from config.localenv import load_local_env
        from config.settings import Settings
        from sagaflow import tracing

        load_local_env()  # what `make run` chose, when run from a plain shell
        settings = Settings.from_env()
        # An operator's requeue, compensate or cancel joins the saga's trace (sent at exit).
        tracing.configure("cli")
        return settings

    @cached_property
    def runner(self):
        from app.bootstrap import build_runner
        from tasks.celery_app import create_celery

        check_redis_url(self.settings.require_redis())
        return build_runner(self.settings, create_celery(self.settings).dispatcher, ())

    @property
    def store(self):
        return self.runner.dead_letters

    @cached_property
    def saga_log(self):
        from app.bootstrap import HOME, Services, build_saga_log

        services = Services(self.settings, (HOME,))
        _check_database(HOME, services.databases[HOME])
        return build_saga_log(services)

    @cached_property
    def actions(self):
        from sagaflow.dlq.actions import OperatorActions

        return OperatorActions(
            self.store, self.runner, self.saga_log, self.settings.dlq_lease_seconds
        )

    @property
    def who(self) -> str:
        try:
            return f"operator {getpass.getuser()}"
        except (KeyError, OSError):
            return "an operator"


def _check_database(service: str, db) -> None:
    """Open the database once, so that an unusable one is named in one line."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    shown = make_url(db.url).render_as_string(hide_password=True)
    try:
        db.ping()
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise Unusable(f"cannot use the {service} database ({shown}): {reason}") from None


cli = build_cli(Context, PROG)


@cli.command()
def worker():
    """Run the DLQ worker (the Procfile's `dlq` process)."""
    from config.settings import Settings
    from dlq.worker import main as run_worker

    # Its own environment only: a long-running process never reads var/saga.env.
    _check_redis_for_worker(Settings.from_env().require_redis())
    run_worker()


def _check_redis_for_worker(url: str) -> None:
    """A URL that can never work, or a Redis that refuses its credentials, stops the worker
    at once (exit 4); a Redis that does not answer yet is an outage it waits out."""
    import redis

    check_redis_url(url)
    client = redis.Redis.from_url(url, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.AuthenticationError:
        raise  # the CLI says it in one line
    except redis.ConnectionError:
        pass  # the worker's loop reports the outage, once
    finally:
        client.close()


def main() -> None:
    run_cli(cli, PROG)
