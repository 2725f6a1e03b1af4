"""What a workflow declaration gives the rest of the system, in-process: the one list of
services (read by settings, bootstrap, schema, workers, `make run`, bench and tests), the
saga id made and read in one place, and the workflow found from a saga id."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pydantic import BaseModel

from app import services as service_modules
from app.order_saga import ORDER
from app.schema import METADATA
from app.workflows import SERVICES, WORKFLOWS
from sagaflow import Compensation, Step, Workflow
from sagaflow._log import SagaBase
from sagaflow._workflow import services_of, workflow_of

# The rules layer: in-process, no subprocess (`make test-fast`).
pytestmark = pytest.mark.rules


class Ctx(BaseModel):
    id: int


def _noop(services, ctx):
    return ctx, "done"


def _undo(services, saga_id):
    return "undone"


def _workflow(name: str, *services: str, home: str = "orders") -> Workflow:
    steps = [
        Step(f"{name}_{s}", s, _noop, Compensation(f"undo_{name}_{s}", _undo)) for s in services
    ]
    return Workflow(name=name, context=Ctx, key=lambda c: c.id, home=home, steps=steps)


def test_the_shops_services_are_derived_from_its_workflow():
    # Read from the declarations, not spelled here: the home first, then every service a
    # step of any workflow names, once each, in declaration order (a step on a new service
    # changes this list with no edit to this test).
    named = [name for wf in WORKFLOWS.values() for name in (wf.home, *(s.queue for s in wf.steps))]
    assert tuple(dict.fromkeys(named)) == SERVICES
    assert {"orders", "products", "balances", "coupons", "dataplatform"} <= set(SERVICES)
    assert ORDER.services[0] == ORDER.home and set(ORDER.services) == {ORDER.home, *ORDER.queues}


def test_every_service_has_its_module_and_the_home_keeps_the_saga_log():
    for service in SERVICES:
        found = service_modules.module(service)
        assert found.Outbox.__tablename__ == "sagaflow_outbox"
        assert found.INTERFACES, f"{service} offers nothing to the steps"
        assert found.Base.metadata in METADATA[service]
    assert [s for s, metadatas in METADATA.items() if SagaBase.metadata in metadatas] == [
        ORDER.home
    ]


def test_a_step_on_a_new_service_adds_it_to_the_list_and_names_its_missing_module():
    # A service no workflow of the shop names (the tests' own sixth service, shipping, is
    # in tests/test_sixth_service.py; a real one would have its module).
    wrapping = dataclasses.replace(
        ORDER,
        steps=[
            *ORDER.steps[:-1],
            Step("wrap_gift", "giftwrap", _noop, Compensation("unwrap_gift", _undo)),
            ORDER.steps[-1],
        ],
    )
    order_services = services_of([ORDER])
    assert order_services[-1] == ORDER.steps[-1].queue  # (the last step's service is new)
    assert services_of([wrapping]) == (*order_services[:-1], "giftwrap", order_services[-1])
    with pytest.raises(ValueError, match=r"app/services/giftwrap\.py is missing"):
        service_modules.module("giftwrap")


def test_services_are_listed_once_home_first_in_declaration_order():
    a = _workflow("a", "products", "balances", home="orders")
    b = _workflow("b", "balances", "wallet", home="orders")
    assert services_of([a, b]) == ("orders", "products", "balances", "wallet")


def test_the_saga_id_is_made_and_read_in_one_place():
    wf = WORKFLOWS["order"]
    saga_id = wf.saga_id_for(42)
    assert saga_id == "order-42"
    assert wf.owns(saga_id) and wf.business_key(saga_id) == "42"


def test_a_workflow_whose_name_has_a_dash_is_found_from_its_saga_ids():
    refund = _workflow("refund", "balances")
    request = _workflow("refund-request", "balances")
    workflows = {wf.name: wf for wf in (refund, request)}
    assert workflow_of(workflows, request.saga_id(Ctx(id=3))) is request
    assert workflow_of(workflows, refund.saga_id(Ctx(id=3))) is refund
    assert request.business_key("refund-request-3") == "3"
    assert workflow_of(workflows, "order-3") is None


def test_every_runtime_error_is_a_saga_error_with_a_code_of_its_own():
    from sagaflow import _errors as errors
    from sagaflow.dlq.actions import Refused

    kinds = [k for k in vars(errors).values() if isinstance(k, type) and issubclass(k, Exception)]
    kinds.append(Refused)
    assert all(issubclass(k, errors.SagaError) for k in kinds)
    codes = [k.code for k in kinds]
    assert len(codes) == len(set(codes)), codes
    assert issubclass(errors.StepTimeout, errors.TransientError)


def test_a_declaration_that_cannot_work_is_refused_when_declared():
    from sagaflow._errors import DeclarationError

    with pytest.raises(DeclarationError, match="names must be unique"):
        _workflow("twice", "wallet", "wallet")
    no_undo = Step("only", "wallet", _noop)
    with pytest.raises(DeclarationError, match="at least one step needs a compensation"):
        Workflow(name="x", context=Ctx, key=lambda c: c.id, home="wallet", steps=[no_undo])


def test_the_shop_reaches_sagaflow_only_through_its_contract():
    """`sagaflow.__all__` and the public modules are the contract; a `_` module is the
    runtime's own. The shop's code (not its tests, which may look inside) never imports
    one, and every name in `__all__` exists."""
    import ast

    import sagaflow

    root = Path(__file__).resolve().parent.parent
    private = []
    for package in ("app", "tasks", "compensations", "dlq", "config", "bench", "scripts"):
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else []
                )
                private += [
                    f"{path.relative_to(root)}: {name}"
                    for name in names
                    if name.startswith("sagaflow.") and "._" in name
                ]
    assert private == []
    assert all(hasattr(sagaflow, name) for name in sagaflow.__all__)


def test_a_workflow_is_versioned_by_its_plan_unless_it_says_its_version():
    same = dataclasses.replace(ORDER)
    assert same.version == ORDER.version and ORDER.version.startswith("p")
    fewer = dataclasses.replace(ORDER, steps=ORDER.steps[1:], version="")
    assert fewer.version != ORDER.version  # a step removed is a new version
    moved = dataclasses.replace(
        ORDER,
        steps=[dataclasses.replace(ORDER.steps[0], queue="products"), *ORDER.steps[1:]],
        version="",
    )
    assert moved.version != ORDER.version  # so is a step moved to another service
    assert dataclasses.replace(ORDER, version="2").version == "2"  # declared: kept
