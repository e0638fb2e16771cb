"""The ingestion statements, built with SQLAlchemy Core, compile to the SQL they had as text.

One text per statement, whatever the row count (the rows travel as one JSON parameter),
is what lets psycopg prepare each statement once; the integration tests check that
PostgreSQL keeps them prepared.
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy.dialects.postgresql import psycopg
from sqlalchemy.sql import ClauseElement

from contacts_ingest.ingestion import service as ingest


def spelled_alike(sql: str) -> str:
    """``sql`` without what only spelling changes: case, quotes, column labels, spaces."""
    sql = sql.lower().replace('"', "").replace("timestamp with time zone", "timestamptz")
    sql = re.sub(r" as (now|clock_timestamp|pg_advisory_xact_lock)_\d+", "", sql)
    return re.sub(r"\s+", " ", sql).strip()


DIALECT = psycopg.dialect()  # type: ignore[no-untyped-call]


def compiled(statement: ClauseElement) -> str:
    return str(statement.compile(dialect=DIALECT))


# The texts these statements had as text() before they were built with Core.
_STATUS_INSERT = (
    "INSERT INTO contact_jobs (job_id, user_id, operation, status, contact_id, code, attempts,"
    " result, error, request_id, accepted_at, started_at, finished_at) SELECT new.job_id,"
    " new.user_id, new.operation, new.status, new.contact_id, new.code, new.attempts,"
    " new.result, new.error, new.request_id, new.accepted_at, new.started_at, clock_timestamp()"
    " FROM json_to_recordset(CAST(%(rows)s AS json)) AS new(job_id text, user_id text,"
    " operation text, status text, contact_id text, code integer, attempts integer,"
    " result json, error json, request_id text, accepted_at timestamptz,"
    " started_at timestamptz, n integer) ORDER BY new.n"
)
_LOCK_JOBS = (
    "SELECT pg_advisory_xact_lock(k), now() FROM (SELECT DISTINCT hashtextextended(j, 0) AS k"
    " FROM unnest(CAST(%(job_ids)s AS text[])) AS j ORDER BY k) AS locks"
)
# The contacts insert as it was, with the version column it now sets (a contact created
# and then upserted in one transaction starts above 1) and a shorter RETURNING; the lock
# of the jobs now also reads the transaction's now().
_CONTACTS_INSERT = (
    "INSERT INTO contacts (id, user_id, email_key, email, first_name, last_name, phone,"
    " company, job_title, social_profiles, status, custom_fields, source, workspace_id,"
    " field_versions, version, created_at, updated_at) SELECT new.id, new.user_id,"
    " new.email_key, new.email, new.first_name, new.last_name, new.phone, new.company,"
    " new.job_title, new.social_profiles, new.status, new.custom_fields, new.source,"
    " new.workspace_id, new.field_versions, new.version, now(), now()"
    " FROM json_to_recordset(CAST(%(rows)s AS json)) AS new(id text, user_id text,"
    " email_key text, email text, first_name text, last_name text, phone text, company text,"
    " job_title text, social_profiles jsonb, status text, custom_fields jsonb, source text,"
    " workspace_id uuid, field_versions jsonb, version integer, n integer) ORDER BY new.n"
    " ON CONFLICT (user_id, email_key) DO NOTHING"
    " RETURNING contacts.id, contacts.lead_score"
)


@pytest.mark.parametrize(
    ("statement", "text"),
    [
        (ingest._INSERT_STATUS_ROWS, _STATUS_INSERT),
        # Core names the subquery's column with its alias.
        (ingest._LOCK_JOBS, _LOCK_JOBS.replace("(k)", "(locks.k)")),
        (ingest._INSERT_CONTACTS, _CONTACTS_INSERT),
    ],
)
def test_a_core_statement_compiles_to_its_text(statement: ClauseElement, text: str) -> None:
    assert spelled_alike(compiled(statement)) == spelled_alike(text)


@pytest.mark.parametrize(
    "statement",
    [
        ingest._INSERT_CONTACTS,
        ingest._UPDATE_CONTACTS,
        ingest._LOCK_CONTACTS,
        ingest._INSERT_STATUS_ROWS,
        ingest._LOCK_JOBS,
        ingest._DONE_JOBS,
    ],
)
def test_every_statement_takes_its_rows_as_one_parameter(statement: ClauseElement) -> None:
    # No list expanded into placeholders, so the text never depends on how many rows
    # (the done-jobs look-up also takes the bounds of the acceptance days it searches).
    parameters = set(statement.compile(dialect=DIALECT).params) - {"since", "until"}
    assert len(parameters) == 1
    assert "POSTCOMPILE" not in compiled(statement)
