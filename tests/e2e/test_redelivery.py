"""Workers killed with jobs in hand: the jobs are delivered again and applied once.

To kill at a known moment without hooks in the code, the test holds the same
per-job advisory lock the service takes, so the worker blocks inside its
transaction on exactly the jobs the test chose.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import redis
from sqlalchemy import Engine, func, select, text

from contacts_ingest.jobs import JobBoard
from contacts_ingest.producer import ContactProducer
from contacts_ingest.schema import contact_jobs, contacts
from contacts_ingest.settings import Settings
from tests.conftest import unique
from tests.e2e.conftest import Process, service_env, start_worker

pytestmark = pytest.mark.e2e


@contextmanager
def jobs_held(engine: Engine, job_ids: list[str]) -> Iterator[None]:
    """Make the workers wait inside their transaction on these jobs until the block exits."""
    with engine.connect() as conn:
        for job_id in job_ids:
            conn.execute(
                text("SELECT pg_advisory_lock(hashtextextended(:job_id, 0))"), {"job_id": job_id}
            )
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock_all()"))


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def finished(engine: Engine, job_ids: list[str]) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count())
                .select_from(contact_jobs)
                .where(contact_jobs.c.job_id.in_(job_ids))
            ).scalar_one()
        )


def unacked_in(redis_client: redis.Redis, settings: Settings, queue: str) -> int:
    entries = redis_client.hvals(f"{settings.redis_key_prefix}unacked")
    return sum(1 for entry in entries if json.loads(entry)[2] == queue)


def assert_applied_once(engine: Engine, user: str, job_ids: list[str]) -> None:
    with engine.connect() as conn:
        codes = conn.execute(
            select(contact_jobs.c.code).where(contact_jobs.c.job_id.in_(job_ids))
        ).scalars()
        versions = conn.execute(
            select(contacts.c.version).where(contacts.c.user_id == user)
        ).scalars()
        assert sorted(codes) == [201] * len(job_ids)
        assert sorted(versions) == [1] * len(job_ids)


def waiting_on_lock(engine: Engine, worker: Process) -> list[psutil.Process]:
    """The worker's pool processes whose database session waits on a job's lock."""
    with engine.connect() as conn:
        ports = set(
            conn.execute(
                text(
                    "SELECT client_port FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query LIKE '%pg_advisory_xact_lock%'"
                )
            ).scalars()
        )
    return [
        child
        for child in psutil.Process(worker.popen.pid).children()
        if any(c.laddr.port in ports for c in child.net_connections(kind="tcp"))
    ]


def family(process: Process) -> list[psutil.Process]:
    parent = psutil.Process(process.popen.pid)
    return [parent, *parent.children(recursive=True)]


@pytest.fixture
def kill_setup(
    settings: Settings, redis_client: redis.Redis
) -> tuple[str, dict[str, str], ContactProducer, JobBoard]:
    queue = unique("contacts-kill")
    env = service_env(settings, CELERY_QUEUE=queue, CELERY_VISIBILITY_TIMEOUT="3")
    producer = ContactProducer(settings.model_copy(update={"celery_queue": queue}))
    return queue, env, producer, JobBoard.for_settings(redis_client, settings)


def test_jobs_of_a_sigkilled_worker_are_redelivered_and_applied_once(
    settings: Settings,
    engine: Engine,
    redis_client: redis.Redis,
    log_dir: Path,
    kill_setup: tuple[str, dict[str, str], ContactProducer, JobBoard],
) -> None:
    queue, env, producer, board = kill_setup
    user = unique("user")
    # Fewer jobs than the worker prefetches (2 processes x 4): it takes them all at once,
    # so when it dies every one of them is in hand, none still in the queue.
    job_ids = [producer.enqueue(user, {"email": f"k{i}@example.com"}) for i in range(6)]
    with jobs_held(engine, job_ids):
        doomed = start_worker(env, log_dir, name="doomed-worker")
        wait_until(lambda: unacked_in(redis_client, settings, queue) == 6, "jobs not taken")
        wait_until(
            lambda: (
                sum((board.pending(j) or {}).get("status") == "processing" for j in job_ids) == 2
            ),
            "jobs not started",
        )
        for process in family(doomed):
            process.send_signal(signal.SIGKILL)
        doomed.popen.wait()
    assert finished(engine, job_ids) == 0

    time.sleep(3.2)  # past the visibility timeout
    rescue = start_worker(env, log_dir, name="rescue-worker")
    try:
        wait_until(lambda: finished(engine, job_ids) == 6, "jobs were lost", timeout=60)
    finally:
        rescue.stop()
    assert_applied_once(engine, user, job_ids)
    assert unacked_in(redis_client, settings, queue) == 0


def test_a_job_whose_pool_process_is_sigkilled_is_retried_and_applied_once(
    settings: Settings,
    engine: Engine,
    redis_client: redis.Redis,
    log_dir: Path,
    kill_setup: tuple[str, dict[str, str], ContactProducer, JobBoard],
) -> None:
    _, env, producer, board = kill_setup
    user = unique("user")
    job_id = producer.enqueue(user, {"email": "child@example.com"})
    worker = start_worker(env, log_dir, name="child-kill-worker")
    try:
        with jobs_held(engine, [job_id]):
            wait_until(
                lambda: (board.pending(job_id) or {}).get("status") == "processing",
                "job not started",
            )
            wait_until(
                lambda: bool(waiting_on_lock(engine, worker)), "no pool process waits on the job"
            )
            [victim] = waiting_on_lock(engine, worker)
            os.kill(victim.pid, signal.SIGKILL)
        wait_until(lambda: finished(engine, [job_id]) == 1, "job was lost", timeout=60)
    finally:
        worker.stop()
    assert_applied_once(engine, user, [job_id])


def test_a_worker_killed_while_draining_a_busy_queue_loses_nothing(
    settings: Settings,
    engine: Engine,
    log_dir: Path,
    kill_setup: tuple[str, dict[str, str], ContactProducer, JobBoard],
) -> None:
    # Killed mid-stream, the worker holds prefetched messages and very likely one it
    # is being handed by Redis at that instant: stock kombu loses that one.
    _, env, producer, _ = kill_setup
    user = unique("user")
    job_ids = [producer.enqueue(user, {"email": f"b{i}@example.com"}) for i in range(300)]
    doomed = start_worker(env, log_dir, name="busy-doomed-worker")
    wait_until(lambda: finished(engine, job_ids) >= 40, "the worker never got going")
    for process in family(doomed):
        process.send_signal(signal.SIGKILL)
    doomed.popen.wait()
    assert finished(engine, job_ids) < len(job_ids)

    time.sleep(3.2)  # past the visibility timeout
    rescue = start_worker(env, log_dir, name="busy-rescue-worker")
    try:
        wait_until(lambda: finished(engine, job_ids) == len(job_ids), "jobs were lost", 90)
    finally:
        rescue.stop()
    assert_applied_once(engine, user, job_ids)
