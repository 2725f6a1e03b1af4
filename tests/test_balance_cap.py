"""A refund always fits: a top-up that lands between use_balance and refund_balance may
bring the balance to the top-up cap, and the refund then lifts it above the cap (a
compensation is never refused), within the 64-bit column. On SQLite and PostgreSQL, where
the old 32-bit column made that refund fail for ever."""

from __future__ import annotations

import pytest

from app.errors import InvalidRequest
from app.schema import upgrade_service
from app.services.balances import MAX_BALANCE, BalanceService
from sagaflow._db import Database
from tests.stack import available_backends
from tests.support import PostgresDatabases, postgres_admin_url


@pytest.fixture(params=available_backends())
def balances(request, tmp_path):
    if request.param == "postgresql":
        pg = PostgresDatabases(postgres_admin_url())
        request.addfinalizer(pg.drop)  # before create: dropped even if a step below fails
        url = pg.create()["balances"]
    else:
        url = f"sqlite:///{tmp_path / 'balances.db'}"
    upgrade_service("balances", url)
    db = Database(url)
    yield BalanceService(db)
    db.dispose()


def test_a_top_up_between_payment_and_refund_never_makes_the_refund_fail(balances):
    user, order_id, paid = 7, 42, 1_000_000
    balances.charge(user, MAX_BALANCE - 10)
    balances.use_balance(order_id, user, paid)  # the saga's step: the order holds `paid`
    balances.charge(user, paid + 10)  # a top-up lands meanwhile, to exactly the cap
    assert balances.get(user)["balance"] == MAX_BALANCE

    assert balances.refund_balance(order_id) == "undone"  # the order failed later

    assert balances.get(user)["balance"] == MAX_BALANCE + paid
    with pytest.raises(InvalidRequest, match="top-up"):
        balances.charge(user, 1)  # above the cap, top-ups are refused; nothing is lost
    assert balances.refund_balance(order_id).startswith("nothing to do")
