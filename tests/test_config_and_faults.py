"""Settings and the fault-injection syntax: refuse what would break delivery guarantees,
and say exactly what is wrong."""

from __future__ import annotations

import pytest

from app.errors import InjectedBusinessError, TransientError
from app.faults import Fault, FaultInjector, parse_faults
from config.settings import Settings


def test_defaults_work_locally_with_sqlite_under_var():
    settings = Settings.from_env({})
    assert settings.database_url("orders").endswith("var/orders.db")
    assert settings.broker_visibility_timeout > settings.step_retry_backoff_max


def test_visibility_timeout_shorter_than_a_retry_delay_is_refused():
    with pytest.raises(ValueError, match="BROKER_VISIBILITY_TIMEOUT"):
        Settings.from_env({"BROKER_VISIBILITY_TIMEOUT": "30", "STEP_RETRY_BACKOFF_MAX": "60"})


def test_non_numeric_setting_names_the_variable():
    with pytest.raises(ValueError, match="STEP_MAX_RETRIES"):
        Settings.from_env({"STEP_MAX_RETRIES": "many"})


def test_faults_are_ignored_unless_enabled(caplog):
    settings = Settings.from_env({"SAGA_FAULTS": "use_balance:timeout"})
    assert settings.faults_spec == "" and not settings.faults_enabled
    assert "SAGA_FAULTS is set but ignored" in caplog.text


def test_fault_spec_parses_names_kinds_and_times():
    assert parse_faults("decrease_stock:timeout:2, refund_balance:transient") == {
        "decrease_stock": Fault("decrease_stock", "timeout", 2),
        "refund_balance": Fault("refund_balance", "transient", None),
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("decrease_stocks:timeout", "unknown step"),
        ("use_balance:slow", "kind 'slow'"),
        ("use_balance:timeout:0", "positive integer"),
        ("use_balance", "name:kind"),
    ],
)
def test_bad_fault_spec_says_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_faults(spec)


def test_fault_fires_the_given_number_of_times_per_order():
    counts: dict[str, int] = {}

    def count(key):
        counts[key] = counts.get(key, 0) + 1
        return counts[key]

    faults = FaultInjector(parse_faults("use_coupon:business:1,use_balance:transient"), count, 0)
    with pytest.raises(InjectedBusinessError):
        faults.before("use_coupon", 1)
    faults.before("use_coupon", 1)  # the second time it behaves
    with pytest.raises(InjectedBusinessError):
        faults.before("use_coupon", 2)  # counted per order
    for _ in range(3):
        with pytest.raises(TransientError):
            faults.before("use_balance", 1)
    faults.before("decrease_stock", 1)  # no fault named: nothing happens
