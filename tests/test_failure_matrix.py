"""The failure matrix, generated: every forward step x {business error, timeout that
recovers, timeout that exhausts the retries, worker crash}, and every compensation x
{error that recovers, error that exhausts, worker crash}; whole on the primary backend
(PostgreSQL when a server answers), and on the other for the cases whose outcome the
database decides: a business refusal undone, and a crash after the commit whose
redelivery must apply nothing twice (the ledger row, the row lock). How a timeout or an
error is retried and parked is the runtime's, the same on either database.

Each case stores its faults as the live spec (sagaflow/_faults.py) that the module's real
prefork worker follows from its next step on, places one order, and checks the end state,
the saga log, the DLQ and the invariants (tests/shop.py: check_invariants). A crash case
kills a pool child; the worker replaces it, as in production.
Every case runs in both saga modes (SAGA_MODE): the same outcome is expected of each."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from app.bootstrap import fault_names
from app.order_saga import ORDER
from sagaflow._choreography import MODES
from sagaflow._faults import clear_live_faults, set_live_faults
from tests.stack import Stack, available_backends, primary_backend_name
from tests.support import wait_for

MAX_ATTEMPTS = 3  # one try plus STEP_MAX_RETRIES=2 (tests/support.py FAST_TIMINGS)


@dataclass(frozen=True)
class Case:
    target: str
    kind: str
    faults: str
    status: str  # the order's final status
    target_status: str  # the target's row in the saga log
    attempts: int | None
    dlq_kind: str | None = None

    @property
    def id(self) -> str:
        return f"{self.target}-{self.kind}"


def step_cases() -> list[Case]:
    cases = []
    for step in ORDER.steps:
        after_success = step.compensation is None  # publish_order: the order already succeeded
        cases += [
            Case(
                step.name,
                "business",
                f"{step.name}:business",
                "COMPLETED" if after_success else "FAILED",
                "dead_lettered" if after_success else "failed",
                1,
                "after_pivot" if after_success else None,
            ),
            Case(
                step.name, "timeout-recovers", f"{step.name}:timeout:1", "COMPLETED", "succeeded", 2
            ),
            Case(
                step.name,
                "timeout-exhausts",
                f"{step.name}:timeout",
                "COMPLETED" if after_success else "NEEDS_ATTENTION",
                "dead_lettered",
                MAX_ATTEMPTS,
                "after_pivot" if after_success else "step",
            ),
            Case(step.name, "crash", f"{step.name}:crash:1", "COMPLETED", "succeeded", 2),
        ]
    return cases


def compensation_cases() -> list[Case]:
    cases = []
    for name in ORDER.compensation_names:
        # The pivot (the last step with a compensation) refusing the order runs every
        # compensation, its own (a void) first. Read from ORDER: a step added before the
        # pivot, or a new pivot, is in the matrix with no edit here.
        trigger = f"{ORDER.pivot}:business"
        cases += [
            Case(name, "error-recovers", f"{trigger},{name}:transient:1", "FAILED", "succeeded", 2),
            Case(
                name,
                "error-exhausts",
                f"{trigger},{name}:transient",
                "NEEDS_ATTENTION",
                "dead_lettered",
                MAX_ATTEMPTS,
                "compensation",
            ),
            Case(name, "crash", f"{trigger},{name}:crash:1", "FAILED", "succeeded", 2),
        ]
    return cases


CASES = step_cases() + compensation_cases()
DATABASE_DECIDES = ("business", "crash")


def off_its_backend(item) -> bool:
    """A case this run leaves out (tests/conftest.py deselects it): on the backend that is
    not the primary one, every case whose outcome the runtime decides rather than the
    database. Deselected after collection rather than left out of the parametrization:
    the module's stack is then built once per (backend, mode), not once per case."""
    spec = getattr(item, "callspec", None)
    if spec is None or "case" not in spec.params:
        return False
    backend, _ = spec.params["stack"]
    return backend != primary_backend_name() and spec.params["case"].kind not in DATABASE_DECIDES


@pytest.fixture(
    scope="module",
    params=[(backend, mode) for backend in available_backends() for mode in MODES],
    ids=lambda p: "-".join(p),
)
def stack(request, tmp_path_factory):
    backend, mode = request.param
    workdir = tmp_path_factory.mktemp(f"matrix-{backend}-{mode}")
    stack = Stack(backend, workdir, SAGA_MODE=mode).start()
    try:
        # One worker for the module; the stack stops it with everything else.
        stack.worker(SAGA_FAULTS_ENABLED="1")
        yield stack
    finally:
        stack.stop()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_failure_matrix(stack, case: Case):
    shop = stack.shop
    redis = stack.rt.redis
    user = shop.new_user(balance=1_000)
    product = shop.product(stock=10, price=100)
    coupon = shop.coupon_for(user, discount=30)  # issued before the faults apply
    set_live_faults(redis, case.faults, fault_names())
    try:
        order_id = shop.order(user, product, quantity=2, issued_coupon_id=coupon)
        order = _settled(shop, order_id, case)
    finally:
        # The previous case's order has settled (its work is done or parked) before the
        # next one's faults are stored.
        clear_live_faults(redis)

    steps = {s["name"]: s for s in order["steps"]}
    assert order["status"] == case.status, (case, order)
    assert steps[case.target]["status"] == case.target_status, steps[case.target]
    assert steps[case.target]["attempts"] == case.attempts, steps[case.target]
    _check_route(case, order, steps)
    entries = stack.rt.dead_letters.entries(saga_id=order["saga_id"])
    entries = [e for e in entries if e["status"] != "resolved"]
    if case.dlq_kind:
        assert [(e["name"], e["kind"]) for e in entries] == [(case.target, case.dlq_kind)]
        assert case.target_status == "dead_lettered"
    else:
        assert entries == []
    shop.check_invariants([order_id], product, 10, user, 1_000, coupon)


def _settled(shop, order_id: int, case: Case) -> dict:
    """Wait for the final status and for the saga log to stop moving."""
    shop.wait_order(order_id, (case.status,), timeout=90)

    # The order's status can be final while work is still moving: publish_order runs after
    # completion, and a crashed cancel_order is redelivered after it already committed.
    def status_of(name):
        return next(s["status"] for s in shop.get_order(order_id)["steps"] if s["name"] == name)

    wait_for(
        lambda: status_of(case.target) == case.target_status,
        60,
        what=f"{case.target} to be {case.target_status} (it is {status_of(case.target)})",
    )
    if case.status == "COMPLETED":
        wait_for(
            lambda: status_of("publish_order") in ("succeeded", "dead_lettered"),
            60,
            what="publish_order to settle",
        )
    return shop.get_order(order_id)


def _check_route(case: Case, order: dict, steps: dict) -> None:
    """The saga log says why: which step failed and which compensations ran, in order."""
    compensations = [s["name"] for s in order["steps"] if s["kind"] == "compensation"]
    if case.target in ORDER.step_names and case.kind == "business" and case.status == "FAILED":
        assert order["failed_step"] == case.target
        # Newest first, the failed step's own undo (a void) included.
        assert compensations == ORDER.compensations_for(case.target)
        assert all(steps[c]["status"] == "succeeded" for c in compensations)
        assert steps[compensations[0]]["detail"] == "nothing to undo: step never applied (voided)"
        later = ORDER.steps_after(case.target)
        assert all(steps[s]["status"] == "not_run" for s in later)
    if case.target in ORDER.compensation_names:
        expected = ORDER.compensations_for(ORDER.pivot)
        assert compensations == expected
        later = compensations[compensations.index(case.target) + 1 :]
        if case.kind == "error-exhausts":
            assert all(steps[c]["status"] == "pending" for c in later)
        else:
            assert all(steps[c]["status"] == "succeeded" for c in compensations)
    if case.status == "NEEDS_ATTENTION":
        assert steps[case.target]["error"]
