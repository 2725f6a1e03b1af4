"""orders: the saga log moves to the saga runtime's own tables, keyed by saga id; the
order service gets its own idempotency ledger (create_order / cancel_order)

Revision ID: orders_0004
Revises: orders_0003
Create Date: 2026-12-01 11:00:00
"""

import json

from alembic import op
import sqlalchemy as sa

from sagaflow.schema import create_ledger, create_saga_log


revision = "orders_0004"
down_revision = "orders_0003"
branch_labels = None
depends_on = None

TURNED_BACK = ("COMPENSATING", "FAILED")


def _contexts(bind) -> dict[int, str]:
    """Each order's saga context, as the steps receive it."""
    items: dict[int, list] = {}
    for row in bind.execute(
        sa.text("SELECT order_id, product_id, quantity, unit_price FROM order_items ORDER BY id")
    ):
        items.setdefault(row.order_id, []).append(
            {
                "product_id": row.product_id,
                "quantity": row.quantity,
                "unit_price": row.unit_price or 0,
            }
        )
    found = {}
    for row in bind.execute(
        sa.text("SELECT id, user_id, issued_coupon_id, total, discount, paid FROM orders")
    ):
        found[row.id] = json.dumps(
            {
                "order_id": row.id,
                "user_id": row.user_id,
                "items": items.get(row.id, []),
                "issued_coupon_id": row.issued_coupon_id,
                "total": row.total or 0,
                "discount": row.discount or 0,
                "paid": row.paid or 0,
            }
        )
    return found


def upgrade() -> None:
    create_saga_log(op)
    create_ledger(op)
    bind = op.get_bind()
    contexts = _contexts(bind)
    orders = bind.execute(
        sa.text(
            "SELECT id, status, failed_step, failure_reason, total, created_at, updated_at "
            "FROM orders"
        )
    ).all()
    for order in orders:
        bind.execute(
            sa.text(
                "INSERT INTO sagaflow_instances (saga_id, workflow, business_key, status, "
                "turned_back, context, failed_step, failure_reason, created_at, updated_at) "
                "VALUES (:saga_id, 'order', :key, :status, :turned_back, :context, "
                ":failed_step, :failure_reason, :created_at, :updated_at)"
            ),
            {
                "saga_id": f"order-{order.id}",
                "key": str(order.id),
                "status": order.status,
                "turned_back": 1 if order.status in TURNED_BACK else 0,
                "context": contexts[order.id],
                "failed_step": order.failed_step,
                "failure_reason": order.failure_reason,
                "created_at": order.created_at,
                "updated_at": order.updated_at,
            },
        )
        if order.total is not None:
            # create_order priced it: the order service's own ledger says so now.
            bind.execute(
                sa.text(
                    "INSERT INTO sagaflow_ledger (saga_id, step, status, payload, updated_at) "
                    "VALUES (:saga_id, 'create_order', :status, '{}', :at)"
                ),
                {
                    "saga_id": f"order-{order.id}",
                    "status": "COMPENSATED" if order.status == "FAILED" else "APPLIED",
                    "at": order.updated_at,
                },
            )
    op.execute(
        "INSERT INTO sagaflow_steps (saga_id, name, kind, position, status, attempts, error, "
        "detail, started_at, finished_at, updated_at) "
        "SELECT 'order-' || CAST(order_id AS VARCHAR(20)), name, "
        "CASE WHEN name = 'publish_order' THEN 'after_pivot' ELSE kind END, position, status, "
        "attempts, error, detail, started_at, finished_at, "
        "COALESCE(updated_at, finished_at, started_at, CURRENT_TIMESTAMP) FROM saga_steps"
    )
    op.drop_table("saga_steps")


def downgrade() -> None:
    raise NotImplementedError("the saga log moved to sagaflow_*; restore from a backup")
