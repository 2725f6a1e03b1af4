"""`python -m sagaflow migrate --database-url URL [--home]`: sagaflow's own tables in one
database, brought up to date (sagaflow.migrations.upgrade).

Exit codes, as the DLQ CLI's: 0 done; 1 refused (the tables need a person first); 2 bad
usage; 4 the database cannot be used, its URL included. Errors are one line on stderr,
and never show the URL's password.
"""

from __future__ import annotations

import click
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from sagaflow._errors import MigrationRefused
from sagaflow.dlq.cli import FAILED_AGAIN, UNREACHABLE, fail
from sagaflow.migrations import HOME_PARTS, SERVICE_PARTS, STEPS, upgrade


@click.command()
@click.option("--database-url", required=True, help="The database, as an SQLAlchemy URL.")
@click.option(
    "--home",
    is_flag=True,
    help="A workflow's home: also the saga log and the operator actions.",
)
def migrate(database_url: str, home: bool) -> None:
    """Apply the sagaflow migrations this database has not had, and record its version."""
    url = _parsed(database_url)
    shown = url.render_as_string(hide_password=True)
    try:
        outcome = upgrade(database_url, HOME_PARTS if home else SERVICE_PARTS)
    except MigrationRefused as exc:
        fail(f"{shown}: {exc}", FAILED_AGAIN)
    except NoSuchModuleError:
        fail(f"--database-url names a database SQLAlchemy does not know: {shown}", UNREACHABLE)
    except ImportError as exc:
        fail(f"--database-url needs the driver {exc.name!r}, which is not installed", UNREACHABLE)
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        if url.password:
            reason = reason.replace(url.password, "***")
        fail(f"cannot use the database {shown}: {reason}", UNREACHABLE)
    except OSError as exc:  # a SQLite file's folder that cannot be made
        fail(f"cannot use the database {shown}: {exc.strerror}: {exc.filename}", UNREACHABLE)
    if outcome.adopted:
        kept = ", ".join(sorted(outcome.adopted))
        click.echo(f"kept the tables the application's own migrations made: {kept}")
    if outcome.applied:
        click.echo("applied: " + ", ".join(_step_name(n) for n in outcome.applied))
    parts = ", ".join(sorted(outcome.after.parts))
    status = "" if outcome.changed else "; nothing to do"
    click.echo(f"{shown}: at sagaflow migration {outcome.after.version} ({parts}){status}")


def _parsed(database_url: str) -> URL:
    """The URL, or one line that shows none of it (it may hold a password that did not
    parse as one)."""
    try:
        return make_url(database_url)
    except (ArgumentError, ValueError):
        fail("--database-url is not a database URL SQLAlchemy can read", UNREACHABLE)


def _step_name(number: int) -> str:
    step = next(step for step in STEPS if number == step.NUMBER)
    return f"{number:04d} {step.PART}"
