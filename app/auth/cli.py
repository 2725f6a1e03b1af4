"""Mint tokens and rotate keys: `python -m app.auth --help`.

    python -m app.auth issue-token --role customer --user 7          # prints the token
    python -m app.auth issue-token --role operator --name alice --out alice.token
    python -m app.auth rotate-key [--retire-old]                     # --retire-old revokes
    python -m app.auth dev-credentials                               # what `make run` does

Exit codes: 0 done; 2 bad usage; 4 the key directory is missing or unreadable. Errors are
one line on stderr.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from app.auth.tokens import ADMIN, CUSTOMER, OPERATOR, ROLES, Keyring, parse_ttl

USAGE, UNUSABLE = 2, 4
# Local development credentials `make run` creates (and `make demo` uses): file -> claims.
DEV_CREDENTIALS = {
    "customer-1": (CUSTOMER, "1"),
    "customer-2": (CUSTOMER, "2"),
    "admin": (ADMIN, "dev-admin"),
    "operator": (OPERATOR, "dev-operator"),
}
DEV_TTL = "30d"


def fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _keyring() -> Keyring:
    from config.localenv import load_local_env
    from config.settings import Settings

    load_local_env()  # what `make run` chose, when run from a plain shell
    return Keyring(Settings.auth_dir_from_env(os.environ))


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _write_token(path: Path, token: str) -> None:
    _write_private(path, token + "\n")


@click.group()
def cli():
    """Bearer tokens for the order saga's API and operator console."""


@cli.command("issue-token")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--user", "user_id", help="the customer's user id (role customer)")
@click.option("--name", help="who the admin or operator is, e.g. alice (shown in audit logs)")
@click.option("--ttl", default="30d", show_default=True, help="lifetime: 3600, 90m, 12h, 30d")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="write it here")
def issue_token(role, user_id, name, ttl, out):
    """Mint a token. It is printed (or written to --out, readable by you only)."""
    if (role == CUSTOMER) != (user_id is not None) or (role != CUSTOMER) == (name is None):
        fail("a customer needs --user ID; an admin or operator needs --name NAME", USAGE)
    keyring = _keyring()
    if not keyring.initialized:
        fail(f"no signing key in {keyring.dir}: run `python -m app.auth rotate-key`", UNUSABLE)
    try:
        token = keyring.mint(role, user_id if role == CUSTOMER else name, parse_ttl(ttl))
    except ValueError as exc:
        fail(str(exc), USAGE)
    if out is None:
        click.echo(token)
    else:
        _write_token(out, token)
        click.echo(f"wrote a {role} token to {out}")


@cli.command("rotate-key")
@click.option("--retire-old", is_flag=True, help="stop accepting every older key (revokes)")
def rotate_key(retire_old):
    """Make a new signing key; tokens signed by older keys work until they are retired."""
    keyring = _keyring()
    kid = keyring.rotate(retire_old=retire_old)
    kept = len(keyring.public_keys()) - 1
    click.echo(
        f"new signing key {kid}; "
        + ("every older key retired" if retire_old else f"{kept} older key(s) still accepted")
    )


@cli.command("dev-credentials")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), required=True)
def dev_credentials(directory: Path):
    """Create the key (if missing) and local development tokens: for each, NAME.token and
    NAME.header (`Authorization: Bearer ...`, for `curl -H @NAME.header`, which keeps the
    token off curl's command line)."""
    keyring = _keyring()
    if keyring.init():
        click.echo(f"created a signing key in {keyring.dir}")
    accepted = keyring.public_keys()
    for filename, (role, subject) in DEV_CREDENTIALS.items():
        path = directory / f"{filename}.token"
        if path.with_suffix(".header").exists() and _still_valid(path, accepted):
            continue
        token = keyring.mint(role, subject, parse_ttl(DEV_TTL))
        _write_token(path, token)
        _write_private(path.with_suffix(".header"), f"Authorization: Bearer {token}\n")
        click.echo(f"wrote {path} and .header ({role} {subject})")


def _still_valid(path: Path, accepted: dict) -> bool:
    """A token file from an earlier run is reused while its key is accepted and it has
    more than a day left."""
    import time

    import jwt

    try:
        token = path.read_text().strip()
        kid = jwt.get_unverified_header(token).get("kid")
        claims = jwt.decode(token, options={"verify_signature": False})
    except (OSError, jwt.PyJWTError):
        return False
    return kid in accepted and claims.get("exp", 0) > time.time() + 86_400


def main() -> None:
    try:
        cli.main(prog_name="python -m app.auth", standalone_mode=False)
    except click.UsageError as exc:
        fail(exc.format_message().replace("\n", " "), USAGE)
    except click.Abort:
        fail("aborted", 1)
    except OSError as exc:
        fail(f"cannot use the key directory: {exc.strerror}: {exc.filename}", UNUSABLE)
