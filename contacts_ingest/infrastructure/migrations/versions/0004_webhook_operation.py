"""A webhook endpoint's operation, fixed when it is created (existing endpoints: create).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "webhook_endpoints",
        sa.Column("operation", sa.String(10), nullable=False, server_default="create"),
    )
    op.create_check_constraint(
        "webhook_endpoints_operation_valid",
        "webhook_endpoints",
        "operation IN ('create', 'upsert')",
    )


def downgrade() -> None:
    op.drop_constraint("webhook_endpoints_operation_valid", "webhook_endpoints")
    op.drop_column("webhook_endpoints", "operation")
