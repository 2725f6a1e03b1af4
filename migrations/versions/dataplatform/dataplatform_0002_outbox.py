"""dataplatform: the transactional outbox (messages written with the change that calls for them)

Revision ID: dataplatform_0002
Revises: dataplatform_0001
Create Date: 2026-12-01 13:00:00
"""

from alembic import op

from sagaflow.schema import create_outbox


revision = "dataplatform_0002"
down_revision = "dataplatform_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_outbox(op)


def downgrade() -> None:
    op.drop_table("sagaflow_outbox")
