"""Later builds of the shop, for the rolling-deploy tests: `python -m tests.later_build
<module> [args...]` runs <module> as `python -m <module>` would (celery with `-A
tasks.worker`, tasks.orchestrator, tasks.relay, dlq, gunicorn), with the order workflow
first replaced by the build TEST_LATER_BUILD names. Every process of the shop reads the
one mapping app.workflows.WORKFLOWS when it builds its runtime, and the API's routes
import app.order_saga.ORDER when the app is made: replacing both before either is read
is a build whose declaration changed:

* `fraud-check`: the release tests/test_rolling_deploy.py deploys. ORDER_V2 checks each
  order for fraud before it takes the money (check_fraud on the balance service, undone by
  clear_fraud_check) and retries decrease_stock four times instead of the settings' two;
  the shop's plan stays in `earlier`, as README "Deploying a change to the saga" says.
* `renamed-knowing` / `renamed`: the shop's plan under another version ("v2-test"), with
  the shop's own kept in `earlier`, or dropped (a build that must refuse its sagas' work):
  tests/test_rolling_versions.py.
"""

from __future__ import annotations

import dataclasses
import os
import runpy
import sys

from app import order_saga, workflows
from app.errors import BusinessError
from app.order_context import OrderContext
from app.order_saga import ORDER
from sagaflow import Compensation, RetryPolicy, Step, Workflow

# An order of more units than this is held for review by v2's check (and only by v2's:
# a saga started on the shop's plan never meets it).
FRAUD_LIMIT = 8
DECREASE_STOCK_RETRY = RetryPolicy(max_retries=4)


class SuspectedFraud(BusinessError):
    code = "suspected_fraud"


def check_fraud(services, ctx: OrderContext):
    units = sum(item.quantity for item in ctx.items)
    if units > FRAUD_LIMIT:
        raise SuspectedFraud(f"{units} units in one order: held for review (at most {FRAUD_LIMIT})")
    return ctx, f"{units} units: no fraud signal"


def clear_fraud_check(services, saga_id: str) -> str:
    # The check holds nothing: its undo has nothing to give back, and says so.
    return "nothing held"


def _fraud_check() -> Workflow:
    steps = []
    for step in ORDER.steps:
        if step.name == "use_balance":
            steps.append(
                Step(
                    "check_fraud",
                    "balances",
                    check_fraud,
                    Compensation("clear_fraud_check", clear_fraud_check, event="FraudCleared"),
                    event="FraudChecked",
                    failure_event="FraudSuspected",
                )
            )
        if step.name == "decrease_stock":
            step = dataclasses.replace(step, retry=DECREASE_STOCK_RETRY)
        steps.append(step)
    # version="": derived from the new plan (a step added is a new version).
    return dataclasses.replace(ORDER, steps=steps, version="", earlier=(ORDER,))


def build(name: str) -> Workflow:
    if name == "fraud-check":
        return _fraud_check()
    if name in ("renamed", "renamed-knowing"):
        earlier = (ORDER,) if name == "renamed-knowing" else ()
        return dataclasses.replace(ORDER, version="v2-test", earlier=earlier)
    raise SystemExit(f"TEST_LATER_BUILD={name!r}: not a build of tests/later_build.py")


def main() -> None:
    later = build(os.environ.get("TEST_LATER_BUILD", ""))
    # As if app/order_saga.py declared it: what imports ORDER from here on (the API's
    # routes start sagas of ORDER) gets the later build's, as does the mapping.
    order_saga.ORDER = later
    workflows.WORKFLOWS[ORDER.name] = later
    module, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
