"""Celery tasks: decode, call the service, done."""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import replace
from functools import cache
from typing import Any

import redis
from celery.signals import worker_process_shutdown
from sqlalchemy.exc import InterfaceError, OperationalError

from contacts_ingest.infrastructure.database import make_engine
from contacts_ingest.infrastructure.metrics import BATCH_JOBS, JOB_SECONDS, JOBS, RETRIES
from contacts_ingest.infrastructure.metrics_dir import MULTIPROC_ENV
from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.ingestion.service import ContactIngestor, Outcome
from contacts_ingest.jobs.board import JobBoard
from contacts_ingest.jobs.job import (
    APPLY_FAILED_MESSAGE,
    TASK_NAME,
    UNREADABLE_MESSAGE,
    ContactJob,
    InvalidJobMessage,
    Refusal,
)
from contacts_ingest.model.json_input import DEPTH_MESSAGE, MAX_DEPTH
from worker.app import app
from worker.batching import BatchTask, Unreadable

log = logging.getLogger(__name__)

_settings = Settings()

# Only failures that a later attempt can overcome are retried (a deadlock between two
# workers' transactions is an OperationalError too); a job that breaks a rule is
# recorded as failed by the service and never raised here.
TRANSIENT_ERRORS = (OperationalError, InterfaceError, redis.ConnectionError, redis.TimeoutError)
# Attempts at a batch before its jobs go back on the queue (the wait between them grows).
ATTEMPTS_BEFORE_HANDING_BACK = 3


@cache
def board() -> JobBoard:
    """One job board per worker process, built lazily so no connection crosses a fork."""
    client = redis.Redis.from_url(_settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    return JobBoard.for_settings(client, _settings)


@cache
def ingestor() -> ContactIngestor:
    """One ingestor per worker process, built lazily so no connection crosses a fork."""
    # No ping before each job: a connection that died (a PostgreSQL restart) fails the
    # batch with OperationalError, which is retried, and the pool replaces it.
    return ContactIngestor(make_engine(_settings.database_url, pre_ping=False), board())


def _backoff(attempt: int) -> float:
    base = _settings.retry_backoff_seconds * 2**attempt
    return random.uniform(0, min(base, _settings.retry_backoff_max_seconds))


def _kind(job: Any) -> str:
    return "batch" if isinstance(job, dict) and job.get("batch") is True else "single"


def apply_jobs(jobs: list[Any]) -> list[int]:
    """Apply ``jobs`` in one transaction; return the indices of jobs to put back on the queue.

    A transient error (PostgreSQL or Redis unreachable, a deadlock) is retried a few
    times, then every job goes back on the queue. Any other error means one job
    breaks something unforeseen: the jobs are then applied one by one, so the others
    still finish; the one that fails again is logged and recorded as failed (500).
    A message the worker could not read fails with 400 if its job is still pending.
    """
    started = time.monotonic()
    for attempt in range(ATTEMPTS_BEFORE_HANDING_BACK):
        try:
            outcomes = _process([_readable(job) for job in jobs])
        except TRANSIENT_ERRORS as exc:
            RETRIES.inc()
            log.warning("transient error applying %d job(s): %s", len(jobs), type(exc).__name__)
            if attempt + 1 < ATTEMPTS_BEFORE_HANDING_BACK:
                time.sleep(_backoff(attempt))
            continue
        except Exception:
            if len(jobs) == 1:
                log.exception("job failed with an unexpected error; recording it as failed")
                return _fail(jobs[0], started)
            log.exception("batch of %d failed; applying its jobs one by one", len(jobs))
            return [i for i, job in enumerate(jobs) if apply_jobs([job])]
        _count(jobs, outcomes, time.monotonic() - started)
        return []
    return list(range(len(jobs)))


def _process(messages: list[Any]) -> list[Outcome | None]:
    """The service's outcomes for ``messages``; None for those that name no job."""
    present = [message for message in messages if message is not None]
    outcomes = iter(ingestor().process_many(present) if present else [])
    return [None if message is None else next(outcomes) for message in messages]


# What a message the worker could not read fails with (worker/batching.py's problems).
_UNREADABLE = {
    "too deep": Refusal(400, DEPTH_MESSAGE),
    "unreadable": Refusal(400, UNREADABLE_MESSAGE),
}


def _readable(job: Any) -> Any:
    """``job`` as the service takes it: a job message, or, for a message that could not
    be read, its pending job rebuilt from Redis to fail with 400; None if it names no
    pending job (logged, and acknowledged: there is nothing to record it in)."""
    if isinstance(job, Unreadable):
        job_id, refusal = job.task_id, _UNREADABLE.get(job.problem, _UNREADABLE["unreadable"])
    elif isinstance(job, dict):
        try:
            ContactJob.from_message(job)
            return job
        except InvalidJobMessage:
            job_id, refusal = job.get("job_id"), Refusal(400, UNREADABLE_MESSAGE)
    else:
        return job  # names no job: the service logs it and drops it
    refused = board().refused(job_id, refusal) if isinstance(job_id, str) else None
    if refused is None:
        log.error(
            "dropping a message that names no pending job",
            extra={"job_id": job_id, "reason": refusal.message},
        )
    return refused


def _fail(job: Any, started: float) -> list[int]:
    """Records ``job``, which failed with an unexpected error, as failed (500)."""
    try:
        readable = _readable(job)
        if isinstance(readable, dict):
            readable = ContactJob.from_message(readable)
        if not isinstance(readable, ContactJob):
            return []  # names no job: nothing to record it in
        outcomes = _process([replace(readable, refusal=Refusal(500, APPLY_FAILED_MESSAGE))])
    except TRANSIENT_ERRORS:
        return [0]  # it comes back, and fails again or succeeds
    except Exception:
        log.exception("could not record the job's failure")
        return []
    _count([job], outcomes, time.monotonic() - started)
    return []


def _count(jobs: list[Any], outcomes: list[Outcome | None], seconds: float) -> None:
    BATCH_JOBS.observe(len(jobs))
    for job, outcome in zip(jobs, outcomes, strict=True):
        kind = _kind(job)
        JOB_SECONDS.labels(kind).observe(seconds)
        if outcome is not None and not outcome.replayed:
            JOBS.labels(outcome.status, str(outcome.code), kind).inc()


class ContactJobs(BatchTask):
    # In contacts: a bulk job of 1,000 goes alone, single jobs go up to this many.
    batch_size = _settings.worker_batch_size
    # A job's body sits three levels down its message: [args, {"job": {"body": ...}}, embed].
    max_depth = MAX_DEPTH + 3

    def run_batch(self, jobs: list[Any]) -> list[int]:
        return apply_jobs(jobs)

    def weight(self, job: Any) -> int:
        if _kind(job) == "batch":
            body = job.get("body")
            items = body.get("contacts") if isinstance(body, dict) else None
            return len(items) if isinstance(items, list) else 1
        return 1


@app.task(base=ContactJobs, name=TASK_NAME)
def ingest_contact(job: Any) -> None:
    """Apply one contact job; its outcome is written to the status table.

    Workers do not call this: they apply the task's messages in batches
    (``ContactJobs.run_batch``). It serves eager calls, with the same handling.
    """
    if apply_jobs([job]):
        raise RuntimeError("job could not be applied now; try again")


@worker_process_shutdown.connect
def _forget_dead_process(pid: int | None = None, **_: Any) -> None:
    from prometheus_client import multiprocess

    if pid is not None and os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
