"""Table definitions (SQLAlchemy Core). Alembic migrations create them; code reads them here."""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSON, JSONB, UUID

metadata = MetaData()

contacts = Table(
    "contacts",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("user_id", String(200), nullable=False),
    Column("email", String(254), nullable=False),
    # Case-folded email: contacts are unique per user on it.
    Column("email_key", String(254), nullable=False),
    Column("first_name", String(100)),
    Column("last_name", String(100)),
    Column("phone", String(50)),
    Column("company", String(150)),
    Column("job_title", String(100)),
    Column("social_profiles", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("status", String(20), nullable=False, server_default="subscribed"),
    Column("custom_fields", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("source", String(100)),
    Column("workspace_id", UUID(as_uuid=False)),
    Column("lead_score", Integer, nullable=False, server_default="0"),
    # Incremented by every write: an audit can prove no job was applied twice.
    Column("version", Integer, nullable=False, server_default="1"),
    # Field (or "social_profiles.<key>", "custom_fields.<key>") -> acceptance time, in
    # microseconds of Redis's clock, of the job that last set it.
    Column("field_versions", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    CheckConstraint(
        "status IN ('subscribed', 'unsubscribed', 'bounced', 'complained')",
        name="contacts_status_valid",
    ),
    Index("contacts_user_email_key", "user_id", "email_key", unique=True),
)

# A final job's status row. Partitioned by acceptance day (UTC): ``contact_jobs_pYYYYMMDD``
# partitions are made ahead of need and dropped whole once old (contacts_ingest/
# ingestion/retention.py); ``contact_jobs_default`` takes rows of days without one, and
# ``contact_jobs_legacy`` holds the rows from before partitioning (migration 0005).
contact_jobs = Table(
    "contact_jobs",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("user_id", String(200), nullable=False),
    Column("operation", String(10), nullable=False),
    Column("status", String(12), nullable=False),
    # The HTTP code the job's outcome maps to: 201/200 on success, 400/409 on failure.
    Column("code", Integer, nullable=False),
    Column("result", JSON),
    Column("error", JSON),
    Column("contact_id", String(40)),
    Column("attempts", Integer, nullable=False, server_default="1"),
    Column("request_id", String(100)),
    # The partition key, so it is part of the key: a job's deliveries all carry its
    # acceptance time, so the job id alone still names one row.
    Column("accepted_at", DateTime(timezone=True), primary_key=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("operation IN ('create', 'upsert')", name="contact_jobs_operation_valid"),
    CheckConstraint("status IN ('succeeded', 'failed')", name="contact_jobs_status_final"),
    # A user's jobs newest first, ties by job id in byte order (contacts_ingest.jobs.status).
    Index("contact_jobs_by_user", "user_id", "accepted_at", text('job_id COLLATE "C"')),
    Index(
        "contact_jobs_failed_by_user",
        "user_id",
        "accepted_at",
        text('job_id COLLATE "C"'),
        postgresql_where=text("status = 'failed'"),
    ),
    postgresql_partition_by="RANGE (accepted_at)",
)

# Jobs that failed unexpectedly on every try (JOB_MAX_ATTEMPTS) and ended failed with
# 500: what operators need to look into them and queue them again. Partitioned like
# contact_jobs, and pruned with it. A row counts only while its job's status row is
# that 500 (it is written just before it).
dead_jobs = Table(
    "dead_jobs",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("accepted_at", DateTime(timezone=True), primary_key=True),
    Column("user_id", String(200), nullable=False),
    Column("attempts", Integer, nullable=False),
    # The last failure's exception class (never its text: it may quote contact data).
    Column("error", String(200), nullable=False),
    Column("failed_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    # The job as its message carried it, to queue it again; null if it could not be read.
    Column("message", JSON),
    # Who its completion callback goes to, and the receiver's origin (or null): a retry
    # that succeeds is called back too.
    Column("callback_owner", String(40)),
    Column("callback_lane", Text),
    postgresql_partition_by="RANGE (accepted_at)",
)

# One row: every final job accepted before ``pruned_before`` has been pruned (null until
# a prune), so a late redelivery of such a job (no status row, no Redis record) is not
# applied again.
job_retention = Table(
    "job_retention",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("pruned_before", DateTime(timezone=True)),
    CheckConstraint("id = 1", name="job_retention_one_row"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(40), primary_key=True),
    Column("user_id", String(200), nullable=False),
    # SHA-256 of the whole key, hex. The key itself is never stored.
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("revoked_at", DateTime(timezone=True)),
    # Seconds a write waits for its outcome: 0 async, NULL the deployment's RESPOND_DEFAULT.
    Column("respond_wait_seconds", Integer),
    # Where the outcome of each of its jobs is POSTed, signed with the secret (whsec_...,
    # stored as is: HMAC needs it).
    Column("callback_url", Text),
    Column("callback_secret", String(100)),
    CheckConstraint("respond_wait_seconds BETWEEN 0 AND 10", name="api_keys_respond_wait_valid"),
)

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("endpoint_id", String(40), primary_key=True),
    Column("user_id", String(200), nullable=False),
    # What every delivery to the endpoint does, chosen when it is created; never the URL's.
    Column("operation", String(10), nullable=False, server_default="create"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("revoked_at", DateTime(timezone=True)),
    Column("callback_url", Text),
    Column("callback_secret", String(100)),
    CheckConstraint("operation IN ('create', 'upsert')", name="webhook_endpoints_operation_valid"),
)

webhook_secrets = Table(
    "webhook_secrets",
    metadata,
    Column("secret_id", String(40), primary_key=True),
    Column(
        "endpoint_id",
        String(40),
        ForeignKey("webhook_endpoints.endpoint_id", ondelete="CASCADE"),
        nullable=False,
    ),
    # whsec_<base64>: HMAC needs the secret itself, so it is stored as is (see README).
    Column("secret", String(100), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    # Set when a newer secret replaces this one: it keeps verifying until then.
    Column("expires_at", DateTime(timezone=True)),
    Index("webhook_secrets_endpoint", "endpoint_id"),
)


# The newest migration this code expects (a test keeps it equal to Alembic's head). The
# gateway checks it for readiness without importing Alembic (about 12 MiB per process).
SCHEMA_HEAD = "0006"


def require_current_schema(conn: Connection, head: str = SCHEMA_HEAD) -> None:
    """Raise if the database is not migrated to ``head`` (``contacts-ingest migrate``)."""
    current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    if current != head:
        raise RuntimeError(f"schema at {current}, code expects {head}: run migrate")
