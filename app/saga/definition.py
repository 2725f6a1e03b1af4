"""The one list that pairs each forward step with its compensation.

Everything that needs the order of steps reads it: the chain builder, the compensator,
the saga log's plan, the DLQ, the fault-injection names, and the README's table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    name: str
    queue: str  # the owning service, and the queue its tasks run on
    compensation: str | None  # None: the step comes after the order succeeded


SAGA: tuple[Step, ...] = (
    Step("create_order", "orders", "cancel_order"),
    Step("decrease_stock", "products", "restore_stock"),
    Step("use_balance", "balances", "refund_balance"),
    Step("use_coupon", "coupons", "restore_coupon"),
    # Publishing comes after the order succeeded: a failure is retried, never compensated.
    Step("publish_order", "dataplatform", None),
)

QUEUES: tuple[str, ...] = tuple(dict.fromkeys(step.queue for step in SAGA))
STEP_NAMES: tuple[str, ...] = tuple(step.name for step in SAGA)
COMPENSATION_NAMES: tuple[str, ...] = tuple(s.compensation for s in SAGA if s.compensation)
BY_NAME: dict[str, Step] = {step.name: step for step in SAGA}
BY_COMPENSATION: dict[str, Step] = {s.compensation: s for s in SAGA if s.compensation}
# The order is COMPLETED once the last compensable step has applied.
PIVOT: str = [s.name for s in SAGA if s.compensation][-1]


def queue_of(name: str) -> str:
    """The queue of a step or a compensation (a compensation runs on its step's service)."""
    step = BY_NAME.get(name) or BY_COMPENSATION[name]
    return step.queue


def steps_after(name: str) -> list[Step]:
    index = STEP_NAMES.index(name)
    return list(SAGA[index + 1 :])


def kind_of(name: str) -> str:
    """step, compensation or publish: how the DLQ and the operator treat it."""
    if name in BY_COMPENSATION:
        return "compensation"
    if BY_NAME[name].compensation is None:
        return "publish"
    return "step"
