"""The operator's CLI for the dead-letter queue: `python -m dlq --help`.

Exit codes scripts can rely on: 0 done; 1 the work failed again or the action is refused;
2 bad usage; 3 no such entry; 4 Redis or a database could not be reached.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from functools import cached_property

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from dlq.store import RESOLVED, RETRYING, STATUSES

OK, FAILED_AGAIN, NO_SUCH_ENTRY, UNREACHABLE = 0, 1, 3, 4
# Piped or in a narrow terminal, keep tables wide enough that ids are never cut.
console = Console(width=None if sys.stdout.isatty() else 160)


class Unusable(Exception):
    """A setting points at something this command cannot use (exit 4)."""


class Context:
    """Builds the runtime only when a command needs it: `list` needs Redis only."""

    @cached_property
    def settings(self):
        from config.settings import Settings

        return Settings.from_env()

    @cached_property
    def saga(self):
        from app.bootstrap import build_runtime
        from app.saga.orchestrator import Saga
        from tasks.celery_app import create_celery

        runtime = build_runtime(self.settings)
        for service, db in runtime.databases.items():
            _check_database(service, db)
        return Saga(runtime, create_celery(self.settings).dispatcher)

    @cached_property
    def store(self):
        import redis

        from app.bootstrap import dlq_backoff
        from dlq.store import DeadLetterStore

        client = redis.Redis.from_url(self.settings.redis_url)
        return DeadLetterStore(client, dlq_backoff(self.settings))

    def entry(self, eid: str) -> dict:
        # Every command that acts on an entry needs the databases: check them first, so
        # an unusable one is exit 4 whatever the entry.
        self.saga  # noqa: B018
        entry = self.store.get(eid)
        if entry is None:
            fail(f"no DLQ entry {eid!r} (see: python -m dlq list)", NO_SUCH_ENTRY)
        return entry


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


def fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _when(ts) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def public(entry: dict) -> dict:
    keys = (
        "id",
        "order_id",
        "name",
        "kind",
        "status",
        "attempts",
        "error_class",
        "error",
        "task",
        "args",
        "first_failed_at",
        "last_failed_at",
        "alerted",
        "note",
    )
    return {k: entry.get(k) for k in keys}


class GuardedGroup(click.Group):
    """One line and a non-zero exit when Redis or a database is down: never a traceback."""

    def invoke(self, ctx):
        from redis.exceptions import RedisError
        from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

        from app.errors import DomainError

        try:
            return super().invoke(ctx)
        except Unusable as exc:
            fail(str(exc), UNREACHABLE)
        except RedisError as exc:
            fail(f"cannot reach Redis: {exc}", UNREACHABLE)
        except DBAPIError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
            fail(f"cannot use a database: {reason}", UNREACHABLE)
        except (ArgumentError, NoSuchModuleError, ImportError) as exc:
            # Raised outside app.db.open_database (which names the setting): say what.
            fail(f"a database URL is not usable: {type(exc).__name__}", UNREACHABLE)
        except DomainError as exc:
            fail(str(exc), FAILED_AGAIN)
        except ValueError as exc:  # bad settings in the environment
            fail(str(exc), UNREACHABLE)


@click.group(cls=GuardedGroup)
@click.pass_context
def cli(ctx):
    """Inspect and act on stuck saga work in the dead-letter queue."""
    ctx.obj = Context()


@cli.command("list")
@click.option("--status", type=click.Choice(STATUSES))
@click.option("--step", "name", help="step or compensation name, e.g. use_balance")
@click.option("--order", "order_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="print a JSON array")
@click.pass_obj
def list_entries(obj: Context, status, name, order_id, as_json):
    """List entries, oldest first."""
    entries = obj.store.entries(status=status, name=name, order_id=order_id)
    if as_json:
        emit_json([public(e) for e in entries])
        return
    table = Table("id", "order", "name", "kind", "status", "attempts", "last failure", "error")
    for e in entries:
        table.add_row(
            e["id"],
            str(e["order_id"]),
            e["name"],
            e["kind"],
            e["status"],
            str(e["attempts"]),
            _when(e["last_failed_at"]),
            e["error"][:60],
        )
    console.print(table if entries else "The DLQ is empty.")


@cli.command()
@click.argument("entry_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def show(obj: Context, entry_id, as_json):
    """Show one entry and its order's saga timeline."""
    from app.errors import NotFound

    entry = obj.entry(entry_id)
    try:
        order = obj.saga.rt.orders.get(entry["order_id"])
    except NotFound:
        order = None  # still show the entry: it is what the operator has to act on
    if as_json:
        emit_json({"entry": {**public(entry), "traceback": entry.get("traceback")}, "order": order})
        return
    console.print(
        f"[bold]{entry['id']}[/] {entry['kind']} [bold]{entry['name']}[/] of order "
        f"{entry['order_id']}: {entry['status']}, {entry['attempts']} DLQ attempts"
    )
    console.print(f"error: {entry['error']}")
    console.print(
        f"first failed {_when(entry['first_failed_at'])}, "
        f"last {_when(entry['last_failed_at'])}; note: {entry.get('note') or '-'}"
    )
    if order is None:
        console.print(f"order {entry['order_id']} is not in the orders database")
        return
    console.print(
        f"order {order['order_id']} is [bold]{order['status']}[/]"
        + (f" ({order['failure_reason']})" if order["failure_reason"] else "")
    )
    table = Table("step", "kind", "status", "attempts", "detail / error")
    for step in order["steps"]:
        table.add_row(
            step["name"],
            step["kind"],
            step["status"],
            str(step["attempts"]),
            step["error"] or step["detail"] or "",
        )
    console.print(table)


def _plan(obj: Context, entry: dict) -> dict:
    """What `requeue` would do, without doing it."""
    from app.saga.definition import COMPENSATION_NAMES, kind_of, steps_after

    statuses = obj.saga.log.statuses(entry["order_id"])
    compensated = [n for n in COMPENSATION_NAMES if statuses.get(n) == "succeeded"]
    if kind_of(entry["name"]) == "compensation":
        then = [c for c in obj.saga.log.owed_compensations(entry["order_id"]) if c != entry["name"]]
    else:
        then = [s.name for s in steps_after(entry["name"])]
    return {
        "id": entry["id"],
        "runs_again": entry["name"],
        "then": then,
        "idempotent": True,
        "already_compensated": compensated,
        "note": "every step and compensation is keyed by (order, step): a repeat "
        "changes nothing, and a step whose compensation already ran refuses",
    }


@cli.command()
@click.argument("entry_id", required=False)
@click.option("--all", "everything", is_flag=True, help="every entry not yet resolved")
@click.option("--dry-run", is_flag=True, help="print what would run again, change nothing")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def requeue(obj: Context, entry_id, everything, dry_run, as_json):
    """Run stuck work again now; on success the saga continues on its queues."""
    if bool(entry_id) == everything:
        fail("give one entry id, or --all", 2)
    entries = (
        [obj.entry(entry_id)]
        if entry_id
        else [e for e in obj.store.entries() if e["status"] != RESOLVED]
    )
    if entry_id and entries[0]["status"] == RESOLVED:
        # Re-running closed work could re-apply a step that was given up and compensated.
        fail(f"{entry_id} is already resolved ({entries[0].get('note')})", FAILED_AGAIN)
    if dry_run:
        plans = [_plan(obj, e) for e in entries]
        if as_json:
            emit_json(plans)
        for plan in [] if as_json else plans:
            click.echo(
                f"{plan['id']}: would run {plan['runs_again']} again, then "
                f"{', '.join(plan['then']) or 'nothing more'}; already compensated: "
                f"{', '.join(plan['already_compensated']) or 'nothing'}; "
                f"safe to repeat (idempotent)"
            )
        return
    results = []
    with Progress(console=Console(stderr=True), disable=len(entries) < 2 or as_json) as bar:
        task = bar.add_task("requeueing", total=len(entries))
        for entry in entries:
            results.append(_requeue_one(obj, entry))
            bar.advance(task)
    if as_json:
        emit_json(results)
    else:
        for r in results:
            click.echo(f"{r['id']}: {'ok' if r['ok'] else 'FAILED AGAIN'}: {r['outcome']}")
    if not all(r["ok"] for r in results):
        sys.exit(FAILED_AGAIN)


def _requeue_one(obj: Context, entry: dict) -> dict:
    from app.saga.log import error_text

    eid = entry["id"]
    obj.store.start_attempt(eid)
    try:
        outcome = obj.saga.retry(entry["order_id"], entry["name"])
    except Exception as exc:
        # The operator is already looking at it: no page.
        obj.store.attempt_failed(
            eid, type(exc).__name__, error_text(exc), give_up=True, alerted=True
        )
        return {"id": eid, "ok": False, "outcome": error_text(exc)}
    obj.store.resolve(eid, f"requeued by an operator: {outcome}")
    return {"id": eid, "ok": True, "outcome": outcome}


@cli.command()
@click.argument("entry_id")
@click.option("--force", is_flag=True, help="even while the DLQ worker still retries it")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def compensate(obj: Context, entry_id, force, as_json):
    """Give up on a stuck forward step and undo the order instead."""
    entry = obj.entry(entry_id)
    if entry["kind"] != "step":
        fail(
            f"{entry_id} is a {entry['kind']}: only a stuck forward step can be given up "
            "(a compensation or a publication can only be requeued or resolved)",
            FAILED_AGAIN,
        )
    if entry["status"] == RESOLVED:
        fail(f"{entry_id} is already resolved ({entry.get('note')})", FAILED_AGAIN)
    if entry["status"] == RETRYING and not force:
        fail(
            f"{entry_id} is still being retried by the DLQ worker (attempt {entry['attempts']});"
            " wait until it needs a human, or pass --force",
            FAILED_AGAIN,
        )
    launched = obj.saga.give_up(entry["order_id"], entry["name"])
    result = {"id": entry_id, "order_id": entry["order_id"], "compensations": launched}
    if as_json:
        emit_json(result)
    else:
        click.echo(
            f"{entry_id}: compensating order {entry['order_id']}: "
            f"{', '.join(launched) or 'nothing applied; order marked FAILED'}"
        )


@cli.command()
@click.argument("entry_id")
@click.option("--note", required=True, help="what was done by hand")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def resolve(obj: Context, entry_id, note, as_json):
    """Mark an entry as handled by hand."""
    entry = obj.entry(entry_id)
    obj.store.resolve(entry_id, f"resolved by hand: {note}")
    if as_json:
        emit_json(public(obj.store.get(entry_id)))
    else:
        click.echo(f"{entry_id}: resolved")
    status = obj.saga.rt.orders.statuses([entry["order_id"]]).get(entry["order_id"])
    if status == "NEEDS_ATTENTION":
        # Resolving closes the DLQ entry only; the saga does not move by itself.
        click.echo(
            f"note: order {entry['order_id']} stays NEEDS_ATTENTION; `requeue` or "
            "`compensate` moves its saga, or fix the order by hand",
            err=True,
        )


@cli.command()
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def purge(obj: Context, yes, as_json):
    """Delete resolved entries (only resolved ones)."""
    ids = [e["id"] for e in obj.store.entries(status=RESOLVED)]
    if ids and not yes:
        if not sys.stdin.isatty():
            fail("refusing to purge without a terminal; pass --yes", FAILED_AGAIN)
        click.confirm(f"Delete {len(ids)} resolved entries?", abort=True)
    removed = obj.store.purge(ids)
    if as_json:
        emit_json({"purged": removed})
    else:
        click.echo(f"purged {removed} resolved entries")


@cli.command()
def worker():
    """Run the DLQ worker (the Procfile's `dlq` process)."""
    from dlq.worker import main as run_worker

    run_worker()


def main() -> None:
    """Usage errors are one line too (click's own are several), exit 2."""
    try:
        code = cli.main(prog_name="python -m dlq", standalone_mode=False)
    except click.UsageError as exc:
        path = exc.ctx.command_path if exc.ctx else "python -m dlq"
        fail(f"{' '.join(exc.format_message().split())} (see: {path} --help)", 2)
    except click.Abort:
        fail("aborted", FAILED_AGAIN)
    sys.exit(code or 0)
