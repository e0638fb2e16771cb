"""Retention against the real PostgreSQL: status rows by acceptance day, pruned whole.

Each test has a database of its own, migrated from nothing (pruning drops partitions
that other tests' rows would live in).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from alembic import command
from sqlalchemy import Engine, insert, select, text

from contacts_ingest.infrastructure.database import make_engine
from contacts_ingest.infrastructure.migrate import alembic_config, ensure_database, upgrade
from contacts_ingest.infrastructure.schema import contact_jobs, contacts
from contacts_ingest.infrastructure.scratch import scratch_database
from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.ingestion.retention import (
    ensure_partitions,
    parse_duration,
    prune,
    pruned_before,
)
from contacts_ingest.ingestion.service import ContactIngestor
from contacts_ingest.jobs.board import JobBoard
from contacts_ingest.jobs.job import ContactJob, new_job_id
from contacts_ingest.jobs.status import job_status, read_final_job
from tests.conftest import unique
from tests.e2e.conftest import CLI

pytestmark = pytest.mark.integration


@pytest.fixture
def database(admin_database_url: str) -> Iterator[str]:
    """A database of the test's own, created but not migrated."""
    name = unique("contacts_retention").replace("-", "_")
    with scratch_database(admin_database_url, name, migrate=False) as url:
        yield url


@pytest.fixture
def migrated(database: str) -> Iterator[Engine]:
    upgrade(database)
    engine = make_engine(database)
    yield engine
    engine.dispose()


def status_row(job_id: str, user: str, accepted_at: datetime) -> dict[str, Any]:
    return {
        "job_id": job_id, "user_id": user, "operation": "create", "status": "succeeded",
        "code": 201, "result": {"code": 201}, "error": None, "contact_id": None,
        "attempts": 1, "request_id": None, "accepted_at": accepted_at,
        "started_at": accepted_at, "finished_at": accepted_at,
    }  # fmt: skip


def partitions(engine: Engine, table: str = "contact_jobs") -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                text(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                    " WHERE i.inhparent = CAST(:t AS regclass)"
                ),
                {"t": table},
            ).scalars()
        )


def holder(engine: Engine, job_id: str) -> str | None:
    """The partition that holds ``job_id``'s status row."""
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT tableoid::regclass::text FROM contact_jobs WHERE job_id = :j"),
            {"j": job_id},
        ).scalar()


def day(moment: datetime) -> str:
    return f"{moment:%Y%m%d}"


def test_the_migration_keeps_existing_rows_and_makes_partitions_ahead(database: str) -> None:
    ensure_database(database)
    command.upgrade(alembic_config(database), "0004")
    engine = make_engine(database)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO contact_jobs (job_id, user_id, operation, status, code, attempts,"
                " accepted_at, started_at, finished_at) VALUES ('job_old', 'u', 'create',"
                " 'succeeded', 201, 1, :t, :t, :t), ('job_today', 'u', 'create', 'failed', 409,"
                " 1, :now, :now, :now)"
            ),
            {"t": now - timedelta(days=3), "now": now},
        )
    upgrade(database)
    assert read_final_job(engine, "job_old") is not None
    today = read_final_job(engine, "job_today")
    assert today is not None
    assert (today["status"], today["code"]) == ("failed", 409)
    assert holder(engine, "job_today") == "contact_jobs_legacy"
    tomorrow = now + timedelta(days=1)
    ahead = {f"contact_jobs_p{day(tomorrow + timedelta(days=n))}" for n in range(7)}
    assert ahead | {"contact_jobs_legacy", "contact_jobs_default"} == partitions(engine)
    # A row of a day with a partition goes there; the key still holds across partitions.
    with engine.begin() as conn:
        conn.execute(insert(contact_jobs), [status_row("job_new", "u", tomorrow)])
    assert holder(engine, "job_new") == f"contact_jobs_p{day(tomorrow)}"
    command.downgrade(alembic_config(database), "0004")
    with engine.connect() as conn:
        kept = conn.execute(text("SELECT job_id FROM contact_jobs ORDER BY job_id")).scalars()
        assert list(kept) == ["job_new", "job_old", "job_today"]
    engine.dispose()


def test_pruning_drops_old_days_whole_keeps_the_rest_and_never_touches_contacts(
    migrated: Engine, database: str
) -> None:
    engine = migrated
    now = datetime.now(UTC)
    # Everything from before partitioning goes at once (as `jobs prune --older-than 0s`).
    with engine.begin() as conn:
        conn.execute(insert(contact_jobs), [status_row("job_legacy", "u", now)])
        conn.execute(
            insert(contacts),
            [{"id": "cnt_kept", "user_id": "u", "email": "kept@example.com",
              "email_key": "kept@example.com", "created_at": now, "updated_at": now}],
        )  # fmt: skip
    cleared = subprocess.run(
        [CLI, "jobs", "prune", "--older-than", "0s"],
        env={"DATABASE_URL": database, "PATH": ""}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "partition(s) dropped" in cleared.stderr
    assert read_final_job(engine, "job_legacy") is None
    assert "contact_jobs_legacy" not in partitions(engine)
    assert f"contact_jobs_p{day(now)}" in partitions(engine)  # made again, empty

    # Days 40 to 33 ago, today, and a straggler of a day without a partition.
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL TimeZone = 'UTC'"))
        ensure_partitions(conn, (now - timedelta(days=40)).date())
    rows = {
        "job_40": now - timedelta(days=40),
        "job_34": now - timedelta(days=34),
        "job_60": now - timedelta(days=60),
        "job_today": now,
    }
    with engine.begin() as conn:
        conn.execute(insert(contact_jobs), [status_row(j, "u", t) for j, t in rows.items()])
    assert holder(engine, "job_40") == f"contact_jobs_p{day(rows['job_40'])}"
    assert holder(engine, "job_60") == "contact_jobs_default"

    pruned = prune(engine, parse_duration("30d"))
    assert sorted(pruned.partitions) == sorted(
        f"{table}_p{day(now - timedelta(days=n))}"
        for table in ("contact_jobs", "dead_jobs")
        for n in range(33, 41)
    )
    assert pruned.stragglers == 1
    assert [j for j in rows if read_final_job(engine, j) is not None] == ["job_today"]
    with engine.connect() as conn:
        assert conn.execute(select(contacts.c.id)).scalars().all() == ["cnt_kept"]
        horizon = pruned_before(conn)
    # The furthest any prune went: the first one's, everything up to then.
    assert horizon is not None
    assert abs(horizon - now) < timedelta(minutes=5)
    # The coming week is there, whatever was dropped.
    week = {f"contact_jobs_p{day(now + timedelta(days=n))}" for n in range(8)}
    assert week <= partitions(engine)


@pytest.mark.parametrize(
    ("text_", "expected"),
    [("30d", timedelta(days=30)), ("12h", timedelta(hours=12)), ("0s", timedelta(0)),
     ("90m", timedelta(minutes=90))],
)  # fmt: skip
def test_durations_read_as_the_command_line_takes_them(text_: str, expected: timedelta) -> None:
    assert parse_duration(text_) == expected


@pytest.mark.parametrize("bad", ["", "30", "1w", "-1d", "1.5h", "d"])
def test_a_duration_that_is_not_one_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="a duration is a whole number"):
        parse_duration(bad)


def test_a_redelivery_after_its_job_was_pruned_is_dropped_not_applied_again(
    migrated: Engine, redis_client: redis.Redis, settings: Settings
) -> None:
    board = JobBoard.for_settings(
        redis_client, settings.model_copy(update={"celery_queue": unique("retention-q")})
    )
    ingestor = ContactIngestor(migrated, board)
    user = unique("user")

    def admitted(body: dict[str, Any]) -> dict[str, Any]:
        job = ContactJob(new_job_id(), user, "create", body, 0)
        admission = board.admit(user_id=user, member=job.job_id, job=job, limit=None)
        return replace(job, accepted_at_us=admission.accepted_at_us).to_message()

    done = admitted({"email": "done@example.com"})
    assert ingestor.process(done).code == 201  # type: ignore[union-attr]
    pending = admitted({"email": "pending@example.com"})  # queued, not yet applied
    prune(migrated, timedelta(0))
    assert read_final_job(migrated, done["job_id"]) is None
    assert job_status(board, lambda j: read_final_job(migrated, j), done["job_id"], user) is None

    # The late redelivery changes nothing and writes no outcome (it would read 409).
    assert ingestor.process(done) is None
    assert read_final_job(migrated, done["job_id"]) is None
    # A job still pending when the prune ran is applied as usual.
    assert ingestor.process(pending).code == 201  # type: ignore[union-attr]
    with migrated.connect() as conn:
        versions = dict(
            conn.execute(select(contacts.c.email, contacts.c.version).where(
                contacts.c.user_id == user)).all()
        )  # fmt: skip
    assert versions == {"done@example.com": 1, "pending@example.com": 1}
