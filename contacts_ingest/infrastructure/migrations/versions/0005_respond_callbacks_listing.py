"""Keys' response mode; completion callbacks of keys and webhook endpoints; finding jobs.

A key's ``respond_wait_seconds`` is NULL for the deployment's default (RESPOND_DEFAULT),
0 for async, 1 to 10 to wait. The status table gets the index a user's listing reads
(newest first, ties by job id in byte order, as Redis orders the pending ones) and a
small one of failed jobs, the ones producers look for.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("respond_wait_seconds", sa.Integer))
    op.create_check_constraint(
        "api_keys_respond_wait_valid", "api_keys", "respond_wait_seconds BETWEEN 0 AND 10"
    )
    for table in ("api_keys", "webhook_endpoints"):
        op.add_column(table, sa.Column("callback_url", sa.Text))
        op.add_column(table, sa.Column("callback_secret", sa.String(100)))
    op.create_index(
        "contact_jobs_by_user",
        "contact_jobs",
        ["user_id", "accepted_at", sa.text('job_id COLLATE "C"')],
    )
    op.create_index(
        "contact_jobs_failed_by_user",
        "contact_jobs",
        ["user_id", "accepted_at", sa.text('job_id COLLATE "C"')],
        postgresql_where=sa.text("status = 'failed'"),
    )


def downgrade() -> None:
    op.drop_index("contact_jobs_failed_by_user", table_name="contact_jobs")
    op.drop_index("contact_jobs_by_user", table_name="contact_jobs")
    for table in ("webhook_endpoints", "api_keys"):
        op.drop_column(table, "callback_secret")
        op.drop_column(table, "callback_url")
    op.drop_constraint("api_keys_respond_wait_valid", "api_keys")
    op.drop_column("api_keys", "respond_wait_seconds")
