"""The operator's CLI for the dead-letter queue, for any workflow: `build_cli(Context)`.

Exit codes scripts can rely on: 0 done; 1 the work failed again or the action is refused;
2 bad usage; 3 no such entry; 4 Redis or a database could not be used. Errors, usage
errors included, are one line on stderr.

`cancel SAGA_ID` acts on a saga still in flight rather than on an entry (dry run first).

The context the application gives it provides: `settings`, `store` (Redis only),
`runner` (sends work to its queues), `saga_log` (the home database: `show`, the dry run
and the record of what operators did), `actions` (sagaflow/dlq/actions.py), `who` (the
operator, for that record) and `prog` (how the CLI is run).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from sagaflow._status import WorkKind
from sagaflow.dlq.actions import FAILED, SENT, SKIPPED, Refused
from sagaflow.dlq.store import NEEDS_HUMAN, RESOLVED, RETRYING, STATUSES

if TYPE_CHECKING:
    from sagaflow._log import SagaLog
    from sagaflow.dlq.actions import OperatorActions
    from sagaflow.dlq.store import DeadLetterStore


class DlqContext(Protocol):
    """What the commands are handed (click's obj), built by the owner's `make_context`."""

    @property
    def store(self) -> DeadLetterStore: ...
    @property
    def actions(self) -> OperatorActions: ...
    @property
    def saga_log(self) -> SagaLog: ...
    @property
    def who(self) -> str: ...
    @property
    def prog(self) -> str: ...


OK, FAILED_AGAIN, USAGE, NO_SUCH_ENTRY, UNREACHABLE = 0, 1, 2, 3, 4
# Piped or in a narrow terminal, keep tables wide enough that ids are never cut.
console = Console(width=None if sys.stdout.isatty() else 160)


class Duration(click.ParamType[float, Any]):
    """A length of time: a number with a unit, d, h, m or s (`30d`)."""

    name = "duration"
    UNITS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        text = str(value).strip()
        number, unit = text[:-1], text[-1:]
        if unit in self.UNITS and number.isascii() and number.isdigit() and len(number) <= 6:
            return float(int(number) * self.UNITS[unit])
        self.fail(f"{text!r} is not a duration such as 30d, 12h, 90m or 3600s", param, ctx)


class Unusable(Exception):
    """A setting points at something this command cannot use (exit 4)."""


def check_redis_url(url: str, setting: str = "REDIS_URL") -> None:
    """Refuse, in one line (exit 4), a URL no Redis client could use: no or an unknown
    scheme, a bad port, an option the client does not know. What it says never includes
    the URL's credentials."""
    import redis

    try:
        pool = redis.ConnectionPool.from_url(url)
        # Options reach the connection only when it is made: make one (it does not connect).
        pool.connection_class(**pool.connection_kwargs)
    except (ValueError, TypeError) as exc:
        reason = str(exc)
        for secret in _credentials_in(url):
            reason = reason.replace(secret, "***")
        raise Unusable(f"{setting} is not a usable Redis URL: {reason}") from None


def _credentials_in(url: str) -> list[str]:
    """The user-and-password part of a URL and its pieces, longest first (even when the
    URL does not parse)."""
    userinfo = url.split("://", 1)[-1].split("/", 1)[0].rpartition("@")[0]
    pieces = [userinfo, *userinfo.split(":", 1)]
    return sorted({p for p in pieces if p}, key=len, reverse=True)


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


PUBLIC = (
    "id",
    "saga_id",
    "workflow",
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


def public(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: entry.get(k) for k in PUBLIC}


def entry_or_exit(obj: DlqContext, eid: str) -> dict[str, Any]:
    entry = obj.store.get(eid)
    if entry is None:
        fail(f"no DLQ entry {eid!r} (see: {obj.prog} list)", NO_SUCH_ENTRY)
    return entry


def _nothing_left(resolved: int) -> str:
    return f"{resolved} already resolved entries" if resolved else "the DLQ is empty"


def _said(result: dict[str, Any]) -> str:
    """One line per entry: what requeue did with it, and why."""
    if result["result"] == SENT:
        return f"{result['id']}: ok: {result['outcome']}"
    return f"{result['id']}: {result['result']} because {result['outcome']}"


def _requeue_one(obj: DlqContext, entry: dict[str, Any], wait: float) -> dict[str, Any]:
    """Requeue one entry as it is now: the DLQ worker may have moved it since the list."""
    eid = entry["id"]
    now = obj.store.get(eid)
    if now is None:
        return {"id": eid, "result": SKIPPED, "ok": True, "outcome": "it is gone (purged)"}
    try:
        return obj.actions.requeue(now, obj.who, wait)
    except Refused as exc:  # resolved meanwhile: nothing to do, not a failure
        return {"id": eid, "result": SKIPPED, "ok": True, "outcome": f"nothing to do: {exc}"}


def _dry_run(
    obj: DlqContext, entries: list[dict[str, Any]], everything: bool, as_json: bool
) -> None:
    plans = [obj.actions.plan(e) for e in entries]
    if as_json:
        emit_json(plans)
        return
    for p in plans:
        if p["cannot_send"]:
            click.echo(f"{p['id']}: would fail because {p['cannot_send']}")
            continue
        click.echo(
            f"{p['id']}: would run {p['runs_again']} again on {p['on_queue']}, then "
            f"{', '.join(p['then']) or 'nothing more'}; already compensated: "
            f"{', '.join(p['already_compensated']) or 'nothing'}; "
            "safe to repeat (idempotent)"
        )
    if everything:
        failing = sum(bool(p["cannot_send"]) for p in plans)
        click.echo(
            f"requeue --all --dry-run: would try {len(plans)}: {len(plans) - failing} "
            f"would be sent, {failing} would fail"
        )


def build_cli(make_context: Callable[[], DlqContext], prog: str) -> click.Group:
    class GuardedGroup(click.Group):
        """One line and a non-zero exit when Redis or a database is down: never a
        traceback."""

        def invoke(self, ctx: click.Context) -> Any:
            from redis.exceptions import AuthenticationError, RedisError
            from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

            try:
                return super().invoke(ctx)
            except Unusable as exc:
                fail(str(exc), UNREACHABLE)
            except Refused as exc:
                fail(str(exc), FAILED_AGAIN)
            except AuthenticationError as exc:
                fail(f"Redis refuses the credentials it was given: {exc}", UNREACHABLE)
            except RedisError as exc:
                fail(f"cannot reach Redis: {exc}", UNREACHABLE)
            except DBAPIError as exc:
                reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
                fail(f"cannot use a database: {reason}", UNREACHABLE)
            except (ArgumentError, NoSuchModuleError, ImportError) as exc:
                fail(f"a database URL is not usable: {type(exc).__name__}", UNREACHABLE)
            except ValueError as exc:  # bad settings, or an action the entry refuses
                fail(str(exc), UNREACHABLE if getattr(exc, "setting", False) else FAILED_AGAIN)

    @click.group(cls=GuardedGroup)
    @click.pass_context
    def cli(ctx: click.Context) -> None:
        """Inspect and act on stuck saga work in the dead-letter queue."""
        ctx.obj = make_context()

    @cli.command("list")
    @click.option("--status", type=click.Choice(STATUSES))
    @click.option("--step", "name", help="step or compensation name, e.g. use_balance")
    @click.option("--saga", "saga_id", help="a saga id, e.g. order-42")
    @click.option("--json", "as_json", is_flag=True, help="print a JSON array")
    @click.pass_obj
    def list_entries(
        obj: DlqContext, status: str | None, name: str | None, saga_id: str | None, as_json: bool
    ) -> None:
        """List entries, oldest first."""
        entries = obj.store.entries(status=status, name=name, saga_id=saga_id)
        if as_json:
            emit_json([public(e) for e in entries])
            return
        table = Table("id", "saga", "name", "kind", "status", "attempts", "last failure", "error")
        for e in entries:
            table.add_row(
                e["id"],
                e["saga_id"],
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
    def show(obj: DlqContext, entry_id: str, as_json: bool) -> None:
        """Show one entry and its saga's timeline."""
        entry = entry_or_exit(obj, entry_id)
        timeline = obj.saga_log.timeline(entry["saga_id"])
        if as_json:
            emit_json(
                {"entry": {**public(entry), "traceback": entry.get("traceback")}, "saga": timeline}
            )
            return
        console.print(
            f"[bold]{entry['id']}[/] {entry['kind']} [bold]{entry['name']}[/] of "
            f"{entry['saga_id']}: {entry['status']}, {entry['attempts']} DLQ attempts"
        )
        console.print(f"error: {entry['error']}")
        console.print(
            f"first failed {_when(entry['first_failed_at'])}, "
            f"last {_when(entry['last_failed_at'])}; note: {entry.get('note') or '-'}"
        )
        if timeline is None:
            console.print(f"{entry['saga_id']} is not in the saga log")
            return
        console.print(
            f"{timeline['saga_id']} (version {timeline.get('version') or 'unrecorded'}) is "
            f"[bold]{timeline['status']}[/]"
            + (f" ({timeline['failure_reason']})" if timeline["failure_reason"] else "")
        )
        table = Table("step", "kind", "status", "attempts", "worker", "detail / error")
        for step in timeline["steps"]:
            table.add_row(
                step["name"],
                step["kind"],
                step["status"],
                str(step["attempts"]),
                step["worker"] or "",
                step["error"] or step["detail"] or "",
            )
        console.print(table)

    @cli.command()
    @click.argument("entry_id", required=False)
    @click.option("--all", "everything", is_flag=True, help="every entry not yet resolved")
    @click.option("--dry-run", is_flag=True, help="print what would run again, change nothing")
    @click.option("--wait", default=60.0, show_default=True, help="seconds to wait for the outcome")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_obj
    def requeue(
        obj: DlqContext,
        entry_id: str | None,
        everything: bool,
        dry_run: bool,
        wait: float,
        as_json: bool,
    ) -> None:
        """Run stuck work again now, on its service's queue; on success the saga continues.
        With --all, every entry is tried, one after the other, whatever happens to the
        others; the exit is 1 if any failed."""
        if bool(entry_id) == everything:
            fail("give one entry id, or --all", USAGE)
        if entry_id:
            entries, resolved = [entry_or_exit(obj, entry_id)], 0
            if entries[0]["status"] == RESOLVED:
                # Re-running closed work could re-apply a step that was given up and undone.
                fail(f"{entry_id} is already resolved ({entries[0].get('note')})", FAILED_AGAIN)
        else:
            every = obj.store.entries()
            entries = [e for e in every if e["status"] != RESOLVED]
            resolved = len(every) - len(entries)
        if not entries:
            if as_json:
                emit_json([])
            else:
                click.echo(f"nothing to do: {_nothing_left(resolved)}")
            return
        if dry_run:
            _dry_run(obj, entries, everything, as_json)
            return
        results = []
        # A bar only for a person watching: piped, stderr carries the error line alone.
        quiet = len(entries) < 2 or as_json or not sys.stderr.isatty()
        with Progress(console=Console(stderr=True), disable=quiet) as bar:
            task = bar.add_task("requeueing", total=len(entries))
            for entry in entries:
                results.append(_requeue_one(obj, entry, wait))
                bar.advance(task)
        failed = [r["id"] for r in results if r["result"] == FAILED]
        if as_json:
            emit_json(results)
        else:
            for r in results:
                click.echo(_said(r))
        if everything and not as_json:
            counts = {k: sum(r["result"] == k for r in results) for k in (SENT, FAILED, SKIPPED)}
            click.echo(
                f"requeue --all: {len(results)} tried: {counts[SENT]} sent, "
                f"{counts[FAILED]} failed, {counts[SKIPPED]} skipped"
                + (f"; {_nothing_left(resolved)}" if resolved else "")
            )
        if failed:
            fail(
                f"{len(failed)} of {len(results)} could not be requeued: {', '.join(failed)}",
                FAILED_AGAIN,
            )

    @cli.command()
    @click.argument("entry_id")
    @click.option("--force", is_flag=True, help="even while the DLQ worker still retries it")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_obj
    def compensate(obj: DlqContext, entry_id: str, force: bool, as_json: bool) -> None:
        """Give up on a stuck forward step and undo the saga instead."""
        entry = entry_or_exit(obj, entry_id)
        launched = obj.actions.compensate(entry, obj.who, force)
        result = {"id": entry_id, "saga_id": entry["saga_id"], "compensations": launched}
        if as_json:
            emit_json(result)
        else:
            click.echo(
                f"{entry_id}: compensating {entry['saga_id']}: "
                f"{', '.join(launched) or 'it had already turned back'}"
            )

    @cli.command()
    @click.argument("entry_id")
    @click.option("--note", required=True, help="what was done by hand")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_obj
    def resolve(obj: DlqContext, entry_id: str, note: str, as_json: bool) -> None:
        """Mark an entry as handled by hand."""
        entry = entry_or_exit(obj, entry_id)
        obj.actions.resolve(entry, obj.who, note)
        if as_json:
            resolved = obj.store.get(entry_id)
            assert resolved is not None, entry_id  # resolved just now: it is there
            emit_json(public(resolved))
        else:
            click.echo(f"{entry_id}: resolved")
        if entry["kind"] == WorkKind.STEP and entry["status"] in (RETRYING, NEEDS_HUMAN):
            # Resolving closes the DLQ entry only; the saga does not move by itself.
            click.echo(
                f"note: {entry['saga_id']} stays NEEDS_ATTENTION; `requeue` or `compensate` "
                "moves its saga, or fix it by hand",
                err=True,
            )

    @cli.command()
    @click.argument("saga_id")
    @click.option("--dry-run", is_flag=True, help="print where it turns back, change nothing")
    @click.option("--note", default="", help="why it is cancelled (required unless --dry-run)")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_obj
    def cancel(obj: DlqContext, saga_id: str, dry_run: bool, note: str, as_json: bool) -> None:
        """Cancel a saga still in flight: it turns back at its next step boundary and
        undoes what applied. Refused once it completed or began turning back."""
        if obj.saga_log.timeline(saga_id) is None:
            fail(f"no saga {saga_id}", NO_SUCH_ENTRY)
        if not dry_run and not note.strip():
            fail("say why with --note (or look first with --dry-run)", USAGE)
        if dry_run:
            plan = obj.actions.cancel_plan(saga_id)
        else:
            plan = obj.actions.cancel(saga_id, obj.who, note)
        if as_json:
            emit_json({**plan, "dry_run": dry_run})
            return
        verb = "would turn back" if dry_run else "turning back"
        click.echo(
            f"{saga_id} ({plan['status']}): {verb} at {plan['turns_back_at']} "
            f"({plan['its_status']}); compensations: {', '.join(plan['compensations'])}"
        )
        if plan["gives_up"]:
            click.echo(f"gives up the parked {', '.join(plan['gives_up'])}")

    @cli.command()
    @click.option(
        "--older-than",
        "older_than",
        required=True,
        type=Duration(),
        help="finished at least this long ago: 30d, 12h, 90m or 3600s",
    )
    @click.option("--dry-run", is_flag=True, help="count what would move, change nothing")
    @click.option("--batch", default=1000, show_default=True, type=click.IntRange(1, 100_000))
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_obj
    def archive(
        obj: DlqContext, older_than: float, dry_run: bool, batch: int, as_json: bool
    ) -> None:
        """Move finished sagas (COMPLETED or FAILED, nothing owed or parked) out of the
        saga log's hot tables into its archive, where they are still found by id."""
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than)
        moved = found = 0
        while True:
            chosen = obj.saga_log.archivable(cutoff, batch)
            found += len(chosen)
            if dry_run or not chosen:
                break
            done = obj.saga_log.archive(chosen)
            moved += done
            if done == 0 or len(chosen) < batch:
                break
        result = {"archivable" if dry_run else "archived": found if dry_run else moved}
        if as_json:
            emit_json({**result, "finished_before": cutoff.isoformat()})
        elif dry_run:
            click.echo(f"would archive {found} sagas finished before {cutoff:%Y-%m-%d %H:%M}")
        else:
            click.echo(f"archived {moved} sagas finished before {cutoff:%Y-%m-%d %H:%M}")

    @cli.command()
    @click.option("--yes", is_flag=True, help="do not ask for confirmation")
    @click.option("--json", "as_json", is_flag=True)
    @click.pass_obj
    def purge(obj: DlqContext, yes: bool, as_json: bool) -> None:
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

    return cli


def run_cli(cli: click.Group, prog: str) -> None:
    """Usage errors are one line too (click's own are several), exit 2."""
    try:
        code = cli.main(prog_name=prog, standalone_mode=False)
    except click.UsageError as exc:
        path = exc.ctx.command_path if exc.ctx else prog
        fail(f"{' '.join(exc.format_message().split())} (see: {path} --help)", USAGE)
    except click.Abort:
        fail("aborted", FAILED_AGAIN)
    sys.exit(code or 0)
