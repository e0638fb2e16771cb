"""Job status rows partitioned by acceptance day; dead-lettered jobs; the prune horizon.

The existing status table is kept as it is, rows and all: it becomes the partition
``contact_jobs_legacy`` for every acceptance time before tomorrow (UTC), attached after
a CHECK constraint proved its range (a scan, not a copy), and is dropped whole once
its newest day is older than the retention period. New days get partitions of their
own (``contact_jobs_pYYYYMMDD``, a week ahead here, then kept ahead by the workers);
``contact_jobs_default`` takes rows of a day that has none. The listing's indexes
(0005) are made on the partitioned table; the old table's serve as its partition's.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Day partitions made here, from the first day after the legacy partition's range.
DAYS_AHEAD = 7

# The listing's indexes (migration 0005), on every partition alike.
_STATUS_INDEXES = {
    "contact_jobs_by_user": "",
    "contact_jobs_failed_by_user": " WHERE status = 'failed'",
}
_STATUS_INDEX_COLUMNS = '(user_id, accepted_at, job_id COLLATE "C")'

_STATUS_COLUMNS = """
    job_id varchar(64) NOT NULL,
    user_id varchar(200) NOT NULL,
    operation varchar(10) NOT NULL,
    status varchar(12) NOT NULL,
    code integer NOT NULL,
    result json,
    error json,
    contact_id varchar(40),
    attempts integer NOT NULL DEFAULT 1,
    request_id varchar(100),
    accepted_at timestamptz NOT NULL,
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    CONSTRAINT contact_jobs_operation_valid CHECK (operation IN ('create', 'upsert')),
    CONSTRAINT contact_jobs_status_final CHECK (status IN ('succeeded', 'failed'))
"""


def _literal(moment: datetime) -> str:
    return f"'{moment.isoformat()}'"


def _day_partitions(table: str, first: datetime, days: int) -> None:
    for n in range(days):
        start = first + timedelta(days=n)
        op.execute(
            f"CREATE TABLE {table}_p{start:%Y%m%d} PARTITION OF {table}"
            f" FOR VALUES FROM ({_literal(start)}) TO ({_literal(start + timedelta(days=1))})"
        )


def upgrade() -> None:
    conn = op.get_bind()
    conn.execute(sa.text("SET LOCAL TimeZone = 'UTC'"))
    today: datetime = conn.execute(sa.text("SELECT date_trunc('day', now())")).scalar_one()
    tomorrow = today + timedelta(days=1)

    op.execute("ALTER TABLE contact_jobs RENAME TO contact_jobs_legacy")
    # Its key is the job id alone; the partitioned table's includes the acceptance time.
    op.execute("ALTER TABLE contact_jobs_legacy DROP CONSTRAINT contact_jobs_pkey")
    for name in _STATUS_INDEXES:  # attached, not built again, below
        op.execute(
            f"ALTER INDEX {name} RENAME TO {name.replace('contact_jobs', 'contact_jobs_legacy')}"
        )
    op.execute(
        f"CREATE TABLE contact_jobs ({_STATUS_COLUMNS}, PRIMARY KEY (job_id, accepted_at))"
        " PARTITION BY RANGE (accepted_at)"
    )
    for name, where in _STATUS_INDEXES.items():
        op.execute(f"CREATE INDEX {name} ON contact_jobs {_STATUS_INDEX_COLUMNS}{where}")
    # Proves the range once, so that attaching needs no scan of its own.
    op.execute(
        "ALTER TABLE contact_jobs_legacy ADD CONSTRAINT contact_jobs_legacy_range"
        f" CHECK (accepted_at < {_literal(tomorrow)})"
    )
    op.execute(
        "ALTER TABLE contact_jobs ATTACH PARTITION contact_jobs_legacy"
        f" FOR VALUES FROM (MINVALUE) TO ({_literal(tomorrow)})"
    )
    op.execute("ALTER TABLE contact_jobs_legacy DROP CONSTRAINT contact_jobs_legacy_range")
    op.execute("CREATE TABLE contact_jobs_default PARTITION OF contact_jobs DEFAULT")
    _day_partitions("contact_jobs", tomorrow, DAYS_AHEAD)

    op.execute(
        """
        CREATE TABLE dead_jobs (
            job_id varchar(64) NOT NULL,
            accepted_at timestamptz NOT NULL,
            user_id varchar(200) NOT NULL,
            attempts integer NOT NULL,
            error varchar(200) NOT NULL,
            failed_at timestamptz NOT NULL DEFAULT now(),
            message json,
            callback_owner varchar(40),
            callback_lane text,
            PRIMARY KEY (job_id, accepted_at)
        ) PARTITION BY RANGE (accepted_at)
        """
    )
    op.execute("CREATE TABLE dead_jobs_default PARTITION OF dead_jobs DEFAULT")
    _day_partitions("dead_jobs", today, DAYS_AHEAD + 1)

    op.execute(
        "CREATE TABLE job_retention (id integer PRIMARY KEY, pruned_before timestamptz,"
        " CONSTRAINT job_retention_one_row CHECK (id = 1))"
    )
    op.execute("INSERT INTO job_retention (id, pruned_before) VALUES (1, NULL)")


def downgrade() -> None:
    op.execute("DROP TABLE job_retention")
    op.execute("DROP TABLE dead_jobs")
    op.execute(f"CREATE TABLE contact_jobs_flat ({_STATUS_COLUMNS}, PRIMARY KEY (job_id))")
    op.execute(
        "INSERT INTO contact_jobs_flat SELECT * FROM contact_jobs ON CONFLICT (job_id) DO NOTHING"
    )
    op.execute("DROP TABLE contact_jobs")
    op.execute("ALTER TABLE contact_jobs_flat RENAME TO contact_jobs")
    op.execute("ALTER INDEX contact_jobs_flat_pkey RENAME TO contact_jobs_pkey")
    for name, where in _STATUS_INDEXES.items():
        op.execute(f"CREATE INDEX {name} ON contact_jobs {_STATUS_INDEX_COLUMNS}{where}")
