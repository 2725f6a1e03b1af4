"""Settings and the fault-injection syntax: refuse what would break delivery guarantees,
and say exactly what is wrong."""

from __future__ import annotations

import pytest

from app.bootstrap import check_served
from app.order_saga import ORDER
from config.settings import Settings
from sagaflow._errors import InjectedBusinessError, TransientError
from sagaflow._faults import (
    Fault,
    FaultInjector,
    LiveFaultInjector,
    parse_faults,
    set_live_faults,
)

# The rules layer: in-process, no subprocess (`make test-fast`).
pytestmark = pytest.mark.rules

KNOWN = ORDER.step_names + ORDER.compensation_names


def test_where_things_are_has_no_default_a_missing_url_is_named():
    settings = Settings.from_env({})
    assert settings.broker_visibility_timeout > settings.step_retry_backoff_max
    with pytest.raises(ValueError, match="PRODUCTS_DATABASE_URL is not set"):
        settings.database_url("products")
    with pytest.raises(ValueError, match="REDIS_URL is not set"):
        settings.require_redis()


def test_services_must_be_known():
    assert Settings.from_env({"SERVICES": "products, balances"}).services == (
        "products",
        "balances",
    )
    # The services are the workflows' (app.workflows.SERVICES): bootstrap checks them.
    with pytest.raises(ValueError, match="SERVICES names warehouse"):
        check_served(Settings.from_env({"SERVICES": "products,warehouse"}).services)


def test_every_database_url_set_is_read_without_a_list_of_services():
    settings = Settings.from_env(
        {"PRODUCTS_DATABASE_URL": "sqlite:///p.db", "SHIPPING_DATABASE_URL": "sqlite:///s.db"}
    )
    assert settings.database_urls == {"products": "sqlite:///p.db", "shipping": "sqlite:///s.db"}


def test_visibility_timeout_shorter_than_a_retry_delay_is_refused():
    with pytest.raises(ValueError, match="BROKER_VISIBILITY_TIMEOUT"):
        Settings.from_env({"BROKER_VISIBILITY_TIMEOUT": "30", "STEP_RETRY_BACKOFF_MAX": "60"})


def test_a_final_sagas_keys_outlive_any_redelivery():
    assert Settings.from_env({}).saga_keys_grace_seconds == 3_600
    assert Settings.from_env({"SAGA_KEYS_GRACE_SECONDS": "600"}).saga_keys_grace_seconds == 600
    # 120 s visibility + 10 s restore + 20 s hard limit: a redelivered message runs later.
    with pytest.raises(ValueError, match="SAGA_KEYS_GRACE_SECONDS=150.0s must exceed"):
        Settings.from_env({"SAGA_KEYS_GRACE_SECONDS": "150"})


def test_non_numeric_setting_names_the_variable():
    with pytest.raises(ValueError, match="STEP_MAX_RETRIES"):
        Settings.from_env({"STEP_MAX_RETRIES": "many"})


def test_faults_are_ignored_unless_enabled(caplog):
    settings = Settings.from_env({"SAGA_FAULTS": "use_balance:timeout"})
    assert settings.faults_spec == "" and not settings.faults_enabled
    assert "SAGA_FAULTS is set but ignored" in caplog.text


def test_fault_spec_parses_names_kinds_and_times():
    assert parse_faults("decrease_stock:timeout:2, refund_balance:transient", KNOWN) == {
        "decrease_stock": Fault("decrease_stock", "timeout", 2),
        "refund_balance": Fault("refund_balance", "transient", None),
    }


def test_a_fault_aimed_at_one_saga_strikes_it_alone():
    counts: dict[str, int] = {}

    def count(key):
        counts[key] = counts.get(key, 0) + 1
        return counts[key]

    faults = parse_faults("use_balance:business@order-7,use_balance:transient:1", KNOWN)
    assert faults["use_balance@order-7"] == Fault("use_balance", "business", None, "order-7")
    injector = FaultInjector(faults, count, 0)
    with pytest.raises(InjectedBusinessError):  # its own, not the one for every saga
        injector.before("use_balance", "order-7")
    with pytest.raises(TransientError):
        injector.before("use_balance", "order-8")
    injector.before("use_balance", "order-8")  # the every-saga fault's one time is spent
    with pytest.raises(InjectedBusinessError):
        injector.before("use_balance", "order-7")  # no times: every time, for order-7 alone
    injector.before("decrease_stock", "order-7")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("decrease_stocks:timeout", "unknown step"),
        ("use_balance:timeout@", "names no saga"),
        ("use_balance:slow", "kind 'slow'"),
        ("use_balance:timeout:0", "positive integer"),
        ("use_balance", "name:kind"),
    ],
)
def test_bad_fault_spec_says_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_faults(spec, KNOWN)


def test_fault_fires_the_given_number_of_times_per_order():
    counts: dict[str, int] = {}

    def count(key):
        counts[key] = counts.get(key, 0) + 1
        return counts[key]

    faults = FaultInjector(
        parse_faults("use_coupon:business:1,use_balance:transient", KNOWN), count, 0
    )
    with pytest.raises(InjectedBusinessError):
        faults.before("use_coupon", "order-1")
    faults.before("use_coupon", "order-1")  # the second time it behaves
    with pytest.raises(InjectedBusinessError):
        faults.before("use_coupon", "order-2")  # counted per saga
    for _ in range(3):
        with pytest.raises(TransientError):
            faults.before("use_balance", "order-1")
    faults.before("decrease_stock", "order-1")  # no fault named: nothing happens


def test_a_live_spec_replaces_the_environments_while_it_is_stored(caplog):
    stored: dict[str, str] = {}

    class Store:  # what set_live_faults needs of a Redis client
        def set(self, key, value):
            stored["spec"] = value

    counts: dict[str, int] = {}

    def count(key):
        counts[key] = counts.get(key, 0) + 1
        return counts[key]

    faults = LiveFaultInjector(
        parse_faults("use_balance:transient", KNOWN), count, 0, lambda: stored.get("spec"), KNOWN
    )
    with pytest.raises(TransientError):
        faults.before("use_balance", "order-1")  # nothing stored: SAGA_FAULTS holds

    set_live_faults(Store(), "use_coupon:business", KNOWN)
    faults.before("use_balance", "order-1")  # the live spec replaced it
    with pytest.raises(InjectedBusinessError):
        faults.before("use_coupon", "order-1")

    with pytest.raises(ValueError, match="unknown step"):
        set_live_faults(Store(), "use_kupon:business", KNOWN)
    assert stored["spec"] == "use_coupon:business"  # a bad spec stores nothing

    stored["spec"] = "use_coupon"  # written by hand, malformed: injects nothing, says so
    faults.before("use_coupon", "order-2")
    assert "ignoring the live fault spec" in caplog.text

    del stored["spec"]
    with pytest.raises(TransientError):
        faults.before("use_balance", "order-2")  # back to SAGA_FAULTS


def test_task_events_are_off_unless_asked_for():
    """Flower turns them on in the workers while it runs (test_flower.py shows it does)."""
    from tasks.celery_app import create_celery

    for env, expected in (({}, False), ({"CELERY_TASK_EVENTS": "1"}, True)):
        conf = create_celery(Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0", **env})).conf
        assert conf.worker_send_task_events is expected
        assert conf.task_send_sent_event is expected


def test_log_format_is_text_unless_json_is_asked_for_and_nothing_else():
    assert Settings.from_env({}).log_format == "text"
    assert Settings.from_env({"LOG_FORMAT": " JSON "}).log_format == "json"
    with pytest.raises(ValueError, match="LOG_FORMAT='xml': it is one of text, json"):
        Settings.from_env({"LOG_FORMAT": "xml"})


def test_a_json_line_names_the_work_it_was_logged_in_and_keeps_its_own_fields():
    import io
    import json
    import logging

    from app.logs import WorkFields, json_formatter
    from sagaflow import working_on

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(json_formatter())
    handler.addFilter(WorkFields("worker"))
    logger = logging.getLogger("test.json_lines")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        with working_on(saga_id="order-7", workflow="order", step="use_balance", attempt=2):
            logger.warning("balance low")
        logger.info("dead-lettered saga_id=order-8 step=use_coupon dlq_id=order-8:use_coupon")
        logger.info("orchestrator started")
    finally:
        logger.removeHandler(handler)
    first, second, third = (json.loads(line) for line in out.getvalue().splitlines())
    assert (first["saga_id"], first["step"], first["attempt"], first["role"]) == (
        "order-7",
        "use_balance",
        "2",
        "worker",
    )
    assert (second["saga_id"], second["step"], second["dlq_id"]) == (
        "order-8",
        "use_coupon",
        "order-8:use_coupon",
    )
    assert "saga_id" not in third and third["level"] == "INFO" and third["time"].endswith("+00:00")
