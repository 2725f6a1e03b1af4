"""An answer made of several reads sees one moment (sagaflow Database.snapshot): the order
page reads the order's row, then its saga's and its refund's; a commit between them must
not give a status from one moment and steps from the next. On SQLite, and on PostgreSQL
when the run has it (its default isolation gives each statement its own moment)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from sagaflow import Database
from tests.support import PostgresDatabases, postgres_admin_url


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path, primary_backend):
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path}/moments.db", create=True)
        yield db
        db.dispose()
        return
    if primary_backend != "postgresql":
        pytest.skip("no PostgreSQL server answered at the start of this run")
    server = PostgresDatabases(postgres_admin_url())
    try:
        db = Database(server.create()["orders"])
        yield db
        db.dispose()
    finally:
        server.drop()


def _value(db: Database, key: int) -> int:
    with db.read() as session:
        return session.execute(text("SELECT v FROM t WHERE k = :k"), {"k": key}).scalar_one()


def _bump(db: Database) -> None:
    """Another process's commit, on a connection of its own."""
    with db.write() as session:
        session.execute(text("UPDATE t SET v = v + 1"))


def test_reads_inside_a_snapshot_see_one_moment(database):
    with database.write() as session:
        session.execute(text("CREATE TABLE t (k INTEGER PRIMARY KEY, v INTEGER NOT NULL)"))
        session.execute(text("INSERT INTO t (k, v) VALUES (1, 1), (2, 1)"))

    # Without one, each read sees the latest commit: the two moments mix.
    first = _value(database, 1)
    _bump(database)
    assert (first, _value(database, 2)) == (1, 2)

    with database.snapshot():
        first = _value(database, 1)
        _bump(database)
        second = _value(database, 2)
        with database.snapshot():  # a nested one joins it
            third = _value(database, 1)
    assert (first, second, third) == (2, 2, 2)
    # The commit made meanwhile is there for the next read.
    assert (_value(database, 1), _value(database, 2)) == (3, 3)
