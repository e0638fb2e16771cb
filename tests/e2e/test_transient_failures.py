"""PostgreSQL unreachable: jobs wait and retry, are never recorded failed, and finish later."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, select

from contacts_ingest.infrastructure.schema import contact_jobs
from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.jobs.board import JobBoard
from contacts_ingest.producer import ContactProducer
from tests.conftest import free_port, unique
from tests.e2e.conftest import service_env, start_worker

pytestmark = pytest.mark.e2e


def test_a_job_retries_while_postgresql_is_unreachable_then_succeeds(
    settings: Settings, engine: Engine, redis_client: redis.Redis, log_dir: Path
) -> None:
    queue = unique("contacts-transient")
    retry = {"RETRY_BACKOFF_SECONDS": "1", "RETRY_BACKOFF_MAX_SECONDS": "1"}
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/contacts"
    producer = ContactProducer(settings.model_copy(update={"celery_queue": queue}))
    board: JobBoard = JobBoard.for_settings(redis_client, settings)
    user = unique("user")
    job_id = producer.enqueue(user, {"email": "later@example.com"})

    blind = start_worker(
        service_env(settings, CELERY_QUEUE=queue, DATABASE_URL=nowhere, **retry),
        log_dir,
        name="blind-worker",
    )
    try:
        deadline = time.monotonic() + 30
        while int((board.pending(job_id) or {}).get("attempts", 0)) < 3:
            assert time.monotonic() < deadline, "the job was not retried"
            time.sleep(0.2)
        pending = board.pending(job_id)
        assert pending is not None
        assert pending["status"] == "processing"
    finally:
        blind.stop()  # warm shutdown hands the waiting retry back to the queue

    healthy = start_worker(service_env(settings, CELERY_QUEUE=queue, **retry), log_dir, "healed")
    try:
        deadline = time.monotonic() + 30
        while (status := producer.status(job_id, user)) and status["status"] != "succeeded":
            assert status["status"] != "failed", status
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
    finally:
        healthy.stop()
    with engine.connect() as conn:
        row = conn.execute(
            select(contact_jobs.c.code, contact_jobs.c.attempts).where(
                contact_jobs.c.job_id == job_id
            )
        ).one()
    assert row.code == 201
    assert row.attempts >= 4
