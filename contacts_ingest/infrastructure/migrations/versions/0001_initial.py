"""Contacts, the job status table and API keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "contacts",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("email_key", sa.String(254), nullable=False),
        sa.Column("first_name", sa.String(100)),
        sa.Column("last_name", sa.String(100)),
        sa.Column("phone", sa.String(50)),
        sa.Column("company", sa.String(150)),
        sa.Column("job_title", sa.String(100)),
        sa.Column(
            "social_profiles",
            postgresql.JSONB,
            nullable=False,
            server_default=sa.text("'{}'::jsonb"),
        ),
        sa.Column("status", sa.String(20), nullable=False, server_default="subscribed"),
        sa.Column(
            "custom_fields", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")
        ),
        sa.Column("source", sa.String(100)),
        sa.Column("workspace_id", postgresql.UUID(as_uuid=False)),
        sa.Column("lead_score", sa.Integer, nullable=False, server_default="0"),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('subscribed', 'unsubscribed', 'bounced', 'complained')",
            name="contacts_status_valid",
        ),
    )
    op.create_index("contacts_user_email_key", "contacts", ["user_id", "email_key"], unique=True)
    op.create_table(
        "contact_jobs",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("operation", sa.String(10), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("code", sa.Integer, nullable=False),
        sa.Column("result", postgresql.JSON),
        sa.Column("error", postgresql.JSON),
        sa.Column("contact_id", sa.String(40)),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
        sa.Column("request_id", sa.String(100)),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "operation IN ('create', 'upsert')", name="contact_jobs_operation_valid"
        ),
        sa.CheckConstraint("status IN ('succeeded', 'failed')", name="contact_jobs_status_final"),
    )
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(40), primary_key=True),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
    op.drop_table("contact_jobs")
    op.drop_index("contacts_user_email_key", table_name="contacts")
    op.drop_table("contacts")
