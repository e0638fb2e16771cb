"""Webhook endpoints and their signing secrets (Standard Webhooks).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("endpoint_id", sa.String(40), primary_key=True),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "webhook_secrets",
        sa.Column("secret_id", sa.String(40), primary_key=True),
        sa.Column(
            "endpoint_id",
            sa.String(40),
            sa.ForeignKey("webhook_endpoints.endpoint_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("secret", sa.String(100), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        # Set when a newer secret replaces this one: it keeps verifying until then.
        sa.Column("expires_at", sa.DateTime(timezone=True)),
    )
    op.create_index("webhook_secrets_endpoint", "webhook_secrets", ["endpoint_id"])


def downgrade() -> None:
    op.drop_table("webhook_secrets")
    op.drop_table("webhook_endpoints")
