"""Listing a user's jobs against the real Redis and PostgreSQL: the status table's query
(byte order, bounds on accepted_at) and the pending index, merged page by page."""

from __future__ import annotations

import re
from dataclasses import replace
from functools import partial

import pytest
import redis
from sqlalchemy import Engine, text

from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.ingestion.service import ContactIngestor
from contacts_ingest.jobs.board import JobBoard
from contacts_ingest.jobs.job import ContactJob, new_job_id
from contacts_ingest.jobs.status import list_jobs, read_final_jobs
from tests.conftest import unique

pytestmark = pytest.mark.integration


@pytest.fixture
def board(redis_client: redis.Redis, settings: Settings) -> JobBoard:
    return JobBoard.for_settings(
        redis_client, settings.model_copy(update={"celery_queue": unique("listing-q")})
    )


def _admit(board: JobBoard, user: str, email: str) -> dict[str, object]:
    job = ContactJob(new_job_id(), user, "create", {"email": email}, 0)
    admission = board.admit(user_id=user, member=job.job_id, job=job, limit=None)
    return replace(job, accepted_at_us=admission.accepted_at_us).to_message()


def _all_pages(board: JobBoard, engine: Engine, user: str, **query: object) -> list[str]:
    lister = partial(read_final_jobs, engine)
    seen: list[str] = []
    below = None
    while True:
        page, below = list_jobs(board, lister, user, below=below, limit=4, **query)  # type: ignore[arg-type]
        seen += [job["job_id"] for job in page]
        if below is None:
            return seen


def test_pages_list_pending_and_final_jobs_once_each_newest_first(
    board: JobBoard, engine: Engine
) -> None:
    user = unique("user")
    ingestor = ContactIngestor(engine, board)
    messages = [_admit(board, user, f"a{i}@example.com") for i in range(11)]
    ingestor.process_many(messages[::2])  # every other one final, in PostgreSQL
    newest_first = [str(m["job_id"]) for m in reversed(messages)]
    assert _all_pages(board, engine, user) == newest_first

    # While a listing goes on, jobs finish and new ones arrive: none repeats or is skipped.
    lister = partial(read_final_jobs, engine)
    page, below = list_jobs(board, lister, user, limit=4)
    seen = [job["job_id"] for job in page]
    _admit(board, user, "new@example.com")
    ingestor.process_many(messages[1::2])
    while below is not None:
        page, below = list_jobs(board, lister, user, below=below, limit=4)
        seen += [job["job_id"] for job in page]
    assert seen == newest_first
    assert all(job["status"] == "succeeded" for job in page)


def test_failed_jobs_are_found_among_many(board: JobBoard, engine: Engine) -> None:
    user = unique("user")
    ingestor = ContactIngestor(engine, board)
    good = [_admit(board, user, f"ok{i}@example.com") for i in range(6)]
    bad = [_admit(board, user, "not an email") for _ in range(3)]
    ingestor.process_many(good + bad)
    failed = _all_pages(board, engine, user, status="failed")
    assert failed == [str(m["job_id"]) for m in reversed(bad)]
    assert _all_pages(board, engine, user, status="queued") == []


def test_jobs_accepted_in_the_same_microsecond_are_ordered_by_their_ids_bytes(
    engine: Engine,
) -> None:
    user = unique("user")
    ids = ["job_B", "job_a", "job_C", "job_b"]  # byte order: B < C < a < b
    with engine.begin() as conn:
        for job_id in ids:
            conn.execute(
                text(
                    "INSERT INTO contact_jobs (job_id, user_id, operation, status, code,"
                    " accepted_at, started_at, finished_at) VALUES (:id, :user, 'create',"
                    " 'succeeded', 201, '2026-06-11T12:00:00.000001Z', now(), now())"
                ),
                {"id": job_id, "user": user},
            )
    first = read_final_jobs(engine, user, below=None, since_us=None, status=None, limit=2)
    assert [row["job_id"] for row in first] == ["job_b", "job_a"]
    moment_us = 1781179200000001
    rest = read_final_jobs(
        engine, user, below=(moment_us, "job_a"), since_us=None, status=None, limit=10
    )
    assert [row["job_id"] for row in rest] == ["job_C", "job_B"]


def test_the_listing_query_reads_the_index(engine: Engine) -> None:
    with engine.connect() as conn:
        plan = conn.execute(
            text(
                "EXPLAIN SELECT * FROM contact_jobs WHERE user_id = 'u'"
                ' AND accepted_at <= now() AND (accepted_at, job_id COLLATE "C")'
                " < (now(), 'job_x' COLLATE \"C\") ORDER BY accepted_at DESC,"
                ' job_id COLLATE "C" DESC LIMIT 21'
            )
        ).scalars()
        # The table is partitioned by day: each partition is read through its part of
        # the index (the partitioned index's own name, or its children's).
        parts = set(
            conn.execute(
                text("SELECT relid::regclass::text FROM pg_partition_tree('contact_jobs_by_user')")
            ).scalars()
        )
        plan_text = "\n".join(plan)
        used = re.findall(r"Index Scan(?: Backward)? using (\S+)", plan_text)
        assert used
        assert set(used) <= parts
        assert "Seq Scan" not in plan_text
