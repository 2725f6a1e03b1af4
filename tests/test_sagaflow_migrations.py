"""sagaflow's own migrations (sagaflow/migrations/): a fresh database gets every table and
the latest version; a second run changes nothing; a database the shop's Alembic history
made is recognised and only gets its version row; the numbered steps make exactly the
tables that history makes and that the runtime's models describe; a shipped step's file
never changes; and `python -m sagaflow migrate`, run for real, says a bad URL in one line.
On SQLite files, and on PostgreSQL when this run has a server.

Not in `make test-fast`: the command's tests start a subprocess."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from itertools import count
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.orm import DeclarativeBase

from app.schema import HOMES, alembic_config
from app.workflows import SERVICES
from config.settings import REPO_ROOT
from sagaflow import ledger_table, migrations
from sagaflow._errors import MigrationRefused
from sagaflow._log import SagaBase
from sagaflow._outbox import outbox_table
from sagaflow.migrations import HOME_PARTS, LATEST, SERVICE_PARTS, STEPS, m0004_outbox, upgrade
from sagaflow.migrations.version import TABLE as VERSION_TABLE
from tests.stack import available_backends
from tests.support import PostgresDatabases, patient, postgres_admin_url

# What each shipped step's file holds. A shipped migration is never edited (databases in
# the field were made by it): a change is a new number, whose file is added here.
SHIPPED = {
    "m0001_ledger.py": "9fb8ffd6f3a36d5c69723dbf10ecc822a804171780eb8a81ce71d4a47164d4f8",
    "m0002_saga_log.py": "23ace94954712096a124f7010839a08f4cde0c86277a77c78f4eef85553354ea",
    "m0003_operator_actions.py": "be318e0e34eaaafe73f2c46b872946dc4395a156968c1f452d7be106c264bdfa",
    "m0004_outbox.py": "0167f3c1d27e169d9e259b5624c3829ea2698aec2926a2197ff79bde9d32374a",
    "m0006_saga_version.py": "7656b4914996884dded8220b840b5dabfda762abc4b5081d53aa56cc55d3cadf",
    "m0005_archive.py": "26abee4dc35a5aa6dd40e05ce5db413e847fa666d04e95e7c8242b589e08767b",
    "m0007_saga_trace.py": "2d5f5fdf35095ecf8bc34d2816b50c35e6fd5cc20fbed4cadf84d3a81522914a",
}

TABLES_OF = {
    "ledger": {"sagaflow_ledger"},
    "outbox": {"sagaflow_outbox"},
    "saga_log": {"sagaflow_instances", "sagaflow_steps"},
    "operator_actions": {"sagaflow_operator_actions"},
    "archive": {"sagaflow_archive"},
}
# The parts the shop's Alembic histories made in each service's database: the data
# platform's step is idempotent on its own record, so it never had a ledger; the archive
# came after sagaflow had its own migrations, so no shop revision makes it.
NO_LEDGER = {"dataplatform"}
SHOP_PARTS = {
    service: set(HOME_PARTS if service in HOMES else SERVICE_PARTS)
    - ({"ledger"} if service in NO_LEDGER else set())
    - {"archive"}
    for service in SERVICES
}


@pytest.fixture(params=available_backends())
def fresh_databases(request, tmp_path):
    """Call it for five new, empty databases, one per service: {service: url}."""
    batches = count()

    def make() -> dict[str, str]:
        if request.param == "postgresql":
            pg = PostgresDatabases(postgres_admin_url())
            request.addfinalizer(pg.drop)  # before create: dropped even if create fails
            return pg.create()
        folder = tmp_path / f"batch{next(batches)}"
        folder.mkdir()
        return {service: f"sqlite:///{folder / service}.db" for service in SERVICES}

    return make


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _version_row(url: str) -> dict:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT * FROM {VERSION_TABLE}")).mappings().all()
    finally:
        engine.dispose()
    assert len(rows) == 1, rows
    return dict(rows[0])


def _describe(url: str, tables) -> dict:
    """Each table as the database itself reports it: columns (type as this dialect writes
    it, nullability, default), primary key, indexes, foreign keys."""
    engine = sa.create_engine(url)
    try:
        found = sa.inspect(engine)
        return {
            table: {
                # By name: a column a later step added comes last in the table, and the
                # models declare it where it reads best.
                "columns": sorted(
                    (
                        c["name"],
                        c["type"].compile(dialect=engine.dialect),
                        c["nullable"],
                        c.get("default"),
                    )
                    for c in found.get_columns(table)
                ),
                "primary_key": found.get_pk_constraint(table)["constrained_columns"],
                "indexes": sorted(
                    (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                    for i in found.get_indexes(table)
                ),
                "foreign_keys": sorted(
                    (
                        tuple(k["constrained_columns"]),
                        k["referred_table"],
                        tuple(k["referred_columns"]),
                    )
                    for k in found.get_foreign_keys(table)
                ),
            }
            for table in sorted(tables)
        }
    finally:
        engine.dispose()


def _sagaflow_tables(url: str) -> set[str]:
    return {table for table in _tables(url) if table.startswith("sagaflow_")}


def _shop_history(urls: dict[str, str], revision: dict[str, str] | None = None) -> None:
    for service, url in urls.items():
        command.upgrade(alembic_config(service, url), (revision or {}).get(service, "head"))


def test_a_fresh_database_gets_every_table_and_the_latest_version(fresh_databases):
    home, service = fresh_databases()["orders"], fresh_databases()["products"]

    at_home = upgrade(home, HOME_PARTS)
    elsewhere = upgrade(service, SERVICE_PARTS)

    assert at_home.applied == (1, 2, 3, 4, 5, 6, 7) and at_home.adopted == frozenset()
    assert _tables(home) == {VERSION_TABLE, *(t for p in HOME_PARTS for t in TABLES_OF[p])}
    assert _version_row(home)["version"] == LATEST == 7
    assert _version_row(home)["parts"] == "archive,ledger,operator_actions,outbox,saga_log"
    assert elsewhere.applied == (1, 4)
    assert _tables(service) == {VERSION_TABLE, "sagaflow_ledger", "sagaflow_outbox"}
    assert _version_row(service)["parts"] == "ledger,outbox"


def test_running_again_changes_nothing(fresh_databases):
    url = fresh_databases()["orders"]
    upgrade(url, HOME_PARTS)
    schema, row = _describe(url, _tables(url)), _version_row(url)

    again = upgrade(url, HOME_PARTS)
    without_home = upgrade(url, SERVICE_PARTS)  # never leaves the home's tables behind

    for outcome in (again, without_home):
        assert outcome.applied == () and not outcome.changed
    assert _describe(url, _tables(url)) == schema
    assert _version_row(url) == row  # not even rewritten


def test_a_database_the_shops_history_made_only_gets_its_version_row(fresh_databases):
    urls = fresh_databases()
    _shop_history(urls)
    engine = sa.create_engine(urls["orders"])
    with engine.begin() as conn:  # a row the field would have: kept as it is
        conn.execute(
            sa.text(
                "INSERT INTO sagaflow_ledger (saga_id, step, status, payload, updated_at) "
                "VALUES ('order-1', 'create_order', 'APPLIED', '{}', CURRENT_TIMESTAMP)"
            )
        )
    engine.dispose()
    before = {service: _describe(url, _tables(url)) for service, url in urls.items()}

    for service, url in urls.items():
        outcome = upgrade(url, SHOP_PARTS[service])

        assert outcome.adopted == SHOP_PARTS[service], service
        # Only what came after the shop's histories stopped making sagaflow's tables:
        # the saga's version (0006) and trace (0007) in the home.
        assert outcome.applied == ((6, 7) if service in HOMES else ()), service
        assert _tables(url) - set(before[service]) == {VERSION_TABLE}
        now = _describe(url, before[service])
        if service in HOMES:
            for column in ("version", "traceparent"):
                added = [c for c in now["sagaflow_instances"]["columns"] if c[0] == column]
                assert len(added) == 1 and added[0][2] is True  # nullable: older sagas had none
                now["sagaflow_instances"]["columns"].remove(added[0])
        assert now == before[service], service
        assert _version_row(url)["version"] == LATEST
        assert upgrade(url, SHOP_PARTS[service]).changed is False
    engine = sa.create_engine(urls["orders"])
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT saga_id FROM sagaflow_ledger")).scalars().all() == [
            "order-1"
        ]
    engine.dispose()


def test_a_shop_database_missing_a_part_gets_that_part_only(fresh_databases):
    """The data platform's history never made a ledger; a products database whose history
    stopped before the outbox has the ledger only."""
    urls = fresh_databases()
    _shop_history(
        {"products": urls["products"], "dataplatform": urls["dataplatform"]},
        {"products": "products_0002"},
    )

    products = upgrade(urls["products"], SERVICE_PARTS)
    dataplatform = upgrade(urls["dataplatform"], SERVICE_PARTS)

    assert (products.adopted, products.applied) == ({"ledger"}, (4,))
    assert (dataplatform.adopted, dataplatform.applied) == ({"outbox"}, (1,))
    for url in (urls["products"], urls["dataplatform"]):
        assert _sagaflow_tables(url) == {VERSION_TABLE, "sagaflow_ledger", "sagaflow_outbox"}


def test_the_numbered_steps_make_the_tables_the_shops_history_makes(fresh_databases):
    """Whichever way a database got there (the shop's history, then the command; or the
    command alone), it holds the same tables."""
    by_shop, by_sagaflow = fresh_databases(), fresh_databases()
    _shop_history(by_shop)

    for service in SERVICES:
        made = _sagaflow_tables(by_shop[service])
        upgrade(by_shop[service], SHOP_PARTS[service])
        upgrade(by_sagaflow[service], SHOP_PARTS[service])
        assert made == {t for p in SHOP_PARTS[service] for t in TABLES_OF[p]}, service
        assert _describe(by_sagaflow[service], made) == _describe(by_shop[service], made)


def test_the_runtimes_models_describe_the_tables_the_steps_make(fresh_databases):
    """A model changed without a new numbered step would fail here (on PostgreSQL too)."""
    by_models, by_steps = fresh_databases()["orders"], fresh_databases()["orders"]

    class Models(DeclarativeBase):
        pass

    ledger_table(Models)
    outbox_table(Models)
    engine = sa.create_engine(by_models)
    SagaBase.metadata.create_all(engine)
    Models.metadata.create_all(engine)
    engine.dispose()
    upgrade(by_steps, HOME_PARTS)

    made = _sagaflow_tables(by_models)
    assert made == _sagaflow_tables(by_steps) - {VERSION_TABLE}
    assert _describe(by_steps, made) == _describe(by_models, made)


def test_the_home_parts_asked_for_later_are_added(fresh_databases):
    url = fresh_databases()["orders"]
    upgrade(url, SERVICE_PARTS)

    outcome = upgrade(url, HOME_PARTS)

    assert outcome.applied == (2, 3, 5, 6, 7)
    assert _version_row(url)["parts"] == "archive,ledger,operator_actions,outbox,saga_log"


def test_a_part_half_there_is_refused_and_nothing_is_written(fresh_databases):
    url = fresh_databases()["orders"]
    _shop_history({"orders": url})
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE sagaflow_steps"))
    engine.dispose()

    with pytest.raises(MigrationRefused, match="saga_log is half there"):
        upgrade(url, HOME_PARTS)

    assert VERSION_TABLE not in _tables(url)


def test_a_step_that_fails_leaves_the_database_as_it_was(fresh_databases, monkeypatch):
    """One transaction: the steps before it and the version table are not kept either."""
    url = fresh_databases()["orders"]

    def broken(op):
        raise RuntimeError("the outbox step broke")

    monkeypatch.setattr(m0004_outbox, "upgrade", broken)
    with pytest.raises(RuntimeError, match="outbox step broke"):
        upgrade(url, HOME_PARTS)

    assert _tables(url) == set()


def test_a_database_at_a_later_version_is_refused(fresh_databases):
    url = fresh_databases()["products"]
    upgrade(url, SERVICE_PARTS)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version = {LATEST + 1}"))
    engine.dispose()

    with pytest.raises(MigrationRefused, match="run a newer sagaflow"):
        upgrade(url, SERVICE_PARTS)


def test_unknown_parts_are_refused():
    with pytest.raises(ValueError, match="unknown sagaflow parts"):
        upgrade("sqlite://", ("ledger", "saga-log"))


def test_the_shipped_steps_are_numbered_in_order_and_never_edited():
    folder = Path(migrations.__file__).parent
    assert sorted(p.name for p in folder.glob("m[0-9]*.py")) == sorted(SHIPPED)
    assert [step.NUMBER for step in STEPS] == list(range(1, len(STEPS) + 1))
    for step in STEPS:
        path = Path(step.__file__)
        assert path.name.startswith(f"m{step.NUMBER:04d}_"), path.name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == SHIPPED[path.name], (
            f"{path.name} was edited: a shipped migration never is; add the next number"
        )


def _sagaflow_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sagaflow", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=patient(60),
    )


def test_the_command_migrates_a_database_and_a_second_run_does_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 'orders.db'}"

    first = _sagaflow_command("migrate", "--database-url", url, "--home")
    second = _sagaflow_command("migrate", "--database-url", url, "--home")

    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        "applied: 0001 ledger, 0002 saga_log, 0003 operator_actions, 0004 outbox,"
        " 0005 archive, 0006 saga_log, 0007 saga_log",
        f"{url}: at sagaflow migration 7 (archive, ledger, operator_actions, outbox, saga_log)",
    ]
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip().endswith("; nothing to do")
    assert _version_row(url)["version"] == LATEST


@pytest.mark.parametrize(
    "bad_url",
    [
        "not a url",
        "nosuchdb://admin:hunter2@db.internal/orders",
        "postgresql+psycopg://admin:hunter2@db.internal:notaport/orders",
        "postgresql+psycopg://admin:hunter2@127.0.0.1:1/orders",  # nothing listens there
        "mysql://admin:hunter2@db.internal/orders",  # its driver is not installed
        "sqlite:///{tmp}/a-file/orders.db",  # its folder cannot be made
    ],
)
def test_the_command_says_a_bad_url_in_one_line_without_its_password(bad_url, tmp_path):
    (tmp_path / "a-file").write_text("")
    done = _sagaflow_command("migrate", "--database-url", bad_url.format(tmp=tmp_path))

    assert done.returncode == 4, done.stderr
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("error: "), done.stderr
    assert "hunter2" not in done.stderr and "Traceback" not in done.stderr
