"""Every workflow the shop runs, with its hooks, and the services they need.

SERVICES is derived, never listed: settings, bootstrap, the schema, the workers, `make
run`, the bench and the tests read it, so that a step on a new service is declared only
in its workflow.
"""

from __future__ import annotations

from app.order_saga import ORDER, ORDER_HOOKS
from app.refund_saga import REFUND, REFUND_HOOKS
from sagaflow import services_of, workflow_of

WORKFLOWS = {ORDER.name: ORDER, REFUND.name: REFUND}
HOOKS = {ORDER.name: ORDER_HOOKS, REFUND.name: REFUND_HOOKS}
SERVICES = services_of(WORKFLOWS.values())


def order_id_of(saga_id: str) -> int | None:
    """The order a saga of any shop workflow is about: each is keyed by the order id.
    None: not a saga of this shop."""
    workflow = workflow_of(WORKFLOWS, saga_id)
    key = workflow.business_key(saga_id) if workflow else ""
    return int(key) if key.isascii() and key.isdigit() else None
