"""The dead-letter list against the real PostgreSQL and Redis: listed, retried, revived."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import redis
from sqlalchemy import Engine

from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.ingestion.dead_letters import (
    list_dead_jobs,
    record_dead_letter,
    retry,
    revive,
)
from contacts_ingest.ingestion.service import ContactIngestor
from contacts_ingest.jobs.board import JobBoard
from contacts_ingest.jobs.callbacks import CallbackRoute
from contacts_ingest.jobs.job import ContactJob, Refusal, new_job_id
from contacts_ingest.jobs.status import read_final_job
from tests.conftest import unique

pytestmark = pytest.mark.integration

DEAD = Refusal(500, "The job could not be processed")
ROUTE = CallbackRoute("key_cb", "https://receiver.example")


@pytest.fixture
def board(redis_client: redis.Redis, settings: Settings) -> JobBoard:
    return JobBoard.for_settings(
        redis_client, settings.model_copy(update={"celery_queue": unique("dead-q")})
    )


def dead_job(engine: Engine, board: JobBoard, user: str) -> tuple[ContactJob, dict[str, Any]]:
    """A job admitted with a callback, whose tries all failed: dead-lettered, then 500."""
    job = ContactJob(new_job_id(), user, "create", {"email": f"{unique('d')}@example.com"}, 0)
    admission = board.admit(user_id=user, member=job.job_id, job=job, limit=None, callback=ROUTE)
    job = replace(job, accepted_at_us=admission.accepted_at_us)
    message = job.to_message()
    record_dead_letter(engine, job, message, attempts=5, error="ValueError", callback=ROUTE)
    ContactIngestor(engine, board).process_many([replace(job, refusal=DEAD)])
    return job, message


def test_a_dead_job_is_listed_retried_with_its_callback_and_revived(
    engine: Engine, board: JobBoard
) -> None:
    user = unique("user")
    job, message = dead_job(engine, board, user)
    [dead] = list_dead_jobs(engine, user_id=user)
    assert (dead.job_id, dead.attempts, dead.error, dead.callback) == (
        job.job_id, 5, "ValueError", ROUTE,
    )  # fmt: skip
    assert dead.message == message
    assert list_dead_jobs(engine, user_id=unique("someone-else")) == []

    retry(board, dead, retention_days=30)
    record = board.pending(job.job_id)
    assert record is not None
    assert (record["status"], record["callback"], record["callback_lane"]) == (
        "queued", ROUTE.owner, ROUTE.lane,
    )  # fmt: skip
    assert read_final_job(engine, job.job_id)["code"] == 500  # type: ignore[index]

    revive(engine, [replace(job, retry=True)])  # as the worker does on its delivery
    assert read_final_job(engine, job.job_id) is None
    assert list_dead_jobs(engine, user_id=user) == []
    [outcome] = ContactIngestor(engine, board).process_many([replace(job, retry=True)])
    assert outcome is not None
    assert outcome.code == 201  # applied: the 500 replaced


def test_a_dead_letter_is_listed_only_while_its_job_ended_500(
    engine: Engine, board: JobBoard
) -> None:
    user = unique("user")
    job = ContactJob(new_job_id(), user, "create", {"email": f"{unique('s')}@example.com"}, 0)
    admission = board.admit(user_id=user, member=job.job_id, job=job, limit=None)
    job = replace(job, accepted_at_us=admission.accepted_at_us)
    # Written before the final row, which a try that had committed already decides.
    record_dead_letter(engine, job, job.to_message(), attempts=5, error="WorkerLostError")
    assert list_dead_jobs(engine, user_id=user) == []
    ContactIngestor(engine, board).process_many([job])
    assert list_dead_jobs(engine, user_id=user) == []
    revive(engine, [replace(job, retry=True)])  # a stray retry changes nothing
    assert read_final_job(engine, job.job_id)["code"] == 201  # type: ignore[index]
