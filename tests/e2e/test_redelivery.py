"""A worker killed with jobs in hand: its jobs are delivered again and applied once."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
import redis
from sqlalchemy import Engine, func, select

from contacts_ingest.producer import ContactProducer
from contacts_ingest.schema import contact_jobs, contacts
from contacts_ingest.settings import Settings
from tests.conftest import unique
from tests.e2e.conftest import service_env, start_worker

pytestmark = pytest.mark.e2e


def test_jobs_of_a_sigkilled_worker_are_redelivered_and_applied_once(
    settings: Settings, engine: Engine, redis_client: redis.Redis, log_dir: Path
) -> None:
    queue = unique("contacts-kill")
    env = service_env(settings, CELERY_QUEUE=queue, CELERY_VISIBILITY_TIMEOUT="3")
    producer = ContactProducer(settings.model_copy(update={"celery_queue": queue}))
    user = unique("user")
    job_ids = [producer.enqueue(user, {"email": f"k{i}@example.com"}) for i in range(60)]

    first = start_worker(env, log_dir, name="doomed-worker")
    deadline = time.monotonic() + 30
    while _finished(engine, job_ids) < 5:
        assert time.monotonic() < deadline, "the first worker never got going"
        time.sleep(0.05)
    # The whole worker, parent and pool children, dies at once with jobs in hand.
    for process in _family(first.popen.pid):
        os.kill(process, signal.SIGKILL)
    first.popen.wait()
    assert _finished(engine, job_ids) < len(job_ids), "nothing was left in hand to redeliver"
    # Messages the dead worker took but never acknowledged wait in kombu's unacked hash.
    unacked = redis_client.hvals(f"{settings.redis_key_prefix}unacked")
    in_hand = [entry for entry in map(json.loads, unacked) if entry[2] == queue]
    assert in_hand, "the killed worker held no unacknowledged message"

    time.sleep(3.5)  # past the visibility timeout
    second = start_worker(env, log_dir, name="rescue-worker")
    try:
        deadline = time.monotonic() + 60
        while _finished(engine, job_ids) < len(job_ids):
            assert time.monotonic() < deadline, "jobs were lost"
            time.sleep(0.2)
    finally:
        second.stop()

    with engine.connect() as conn:
        outcomes = conn.execute(
            select(contact_jobs.c.code, func.count())
            .where(contact_jobs.c.job_id.in_(job_ids))
            .group_by(contact_jobs.c.code)
        ).all()
        versions = conn.execute(
            select(contacts.c.version).where(contacts.c.user_id == user)
        ).scalars()
        assert dict(outcomes) == {201: len(job_ids)}
        assert sorted(versions) == [1] * len(job_ids)


def _finished(engine: Engine, job_ids: list[str]) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(contact_jobs)
                .where(contact_jobs.c.job_id.in_(job_ids))
            ).scalar_one()
        )


def _family(pid: int) -> list[int]:
    parent = psutil.Process(pid)
    return [child.pid for child in parent.children(recursive=True)] + [pid]
