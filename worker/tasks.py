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
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from contacts_ingest.infrastructure.database import make_engine
from contacts_ingest.infrastructure.metrics import BATCH_JOBS, JOB_SECONDS, JOBS, RETRIES
from contacts_ingest.infrastructure.metrics_dir import MULTIPROC_ENV
from contacts_ingest.infrastructure.redis_clients import redis_client
from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.ingestion.dead_letters import record_dead_letter, revive
from contacts_ingest.ingestion.service import ContactIngestor, Outcome
from contacts_ingest.jobs.board import JobBoard
from contacts_ingest.jobs.callbacks import CallbackRoute
from contacts_ingest.jobs.job import (
    PROCESSING_FAILED_MESSAGE,
    TASK_NAME,
    UNREADABLE_MESSAGE,
    ContactJob,
    InvalidJobMessage,
    Refusal,
)
from contacts_ingest.model.json_input import DEPTH_MESSAGE, MAX_DEPTH
from worker.app import app
from worker.batching import BatchOutcome, BatchTask, Exhausted, Unreadable

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
    client = redis_client(_settings, socket_timeout=5, socket_connect_timeout=5)
    return JobBoard.for_settings(client, _settings)


@cache
def engine() -> Engine:
    """One engine per worker process, built lazily so no connection crosses a fork."""
    # No ping before each job: a connection that died (a PostgreSQL restart) fails the
    # batch with OperationalError, which is retried, and the pool replaces it.
    return make_engine(_settings.database_url, pre_ping=False)


@cache
def ingestor() -> ContactIngestor:
    """One ingestor per worker process, built lazily so no connection crosses a fork."""
    return ContactIngestor(engine(), board())


def _backoff(attempt: int) -> float:
    base = _settings.retry_backoff_seconds * 2**attempt
    return random.uniform(0, min(base, _settings.retry_backoff_max_seconds))


def _kind(job: Any) -> str:
    return "batch" if isinstance(job, dict) and job.get("batch") is True else "single"


def apply_jobs(jobs: list[Any]) -> BatchOutcome:
    """Apply ``jobs`` in one transaction; say which to put back on the queue, which failed.

    A transient error (PostgreSQL or Redis unreachable, a deadlock) is retried a few
    times, then every job goes back on the queue. Any other error means one job
    breaks something unforeseen: the jobs are then applied one by one, so the others
    still finish; one that fails on its own is logged and reported failed, to be tried
    again alone (worker/batching.py), until its tries are used up (``Exhausted``): it
    is then recorded as failed (500) and dead-lettered. A message the worker could not
    read fails with 400 if its job is still pending.
    """
    if len(jobs) > 1 and any(isinstance(job, Exhausted) for job in jobs):
        return _one_by_one(jobs)
    if len(jobs) == 1 and isinstance(jobs[0], Exhausted):
        return _record_dead(jobs[0])
    started = time.monotonic()
    for attempt in range(ATTEMPTS_BEFORE_HANDING_BACK):
        try:
            readable = [_readable(job) for job in jobs]
            retried = [job for job in readable if isinstance(job, dict) and job.get("retry")]
            if retried:
                revive(engine(), [ContactJob.from_message(job) for job in retried])
            outcomes = _process(readable)
        except TRANSIENT_ERRORS as exc:
            RETRIES.inc()
            log.warning("transient error applying %d job(s): %s", len(jobs), type(exc).__name__)
            if attempt + 1 < ATTEMPTS_BEFORE_HANDING_BACK:
                time.sleep(_backoff(attempt))
            continue
        except Exception as exc:
            if len(jobs) == 1:
                log.exception(
                    "job failed with an unexpected error; it is tried again alone",
                    extra={"job_id": _job_id(jobs[0])},
                )
                return BatchOutcome(failed=((0, type(exc).__name__),))
            log.exception("batch of %d failed; applying its jobs one by one", len(jobs))
            return _one_by_one(jobs)
        _count(jobs, outcomes, time.monotonic() - started)
        return BatchOutcome()
    return BatchOutcome(hand_back=tuple(range(len(jobs))))


def _one_by_one(jobs: list[Any]) -> BatchOutcome:
    """``apply_jobs`` for each job alone; the outcomes gathered under the batch's indices."""
    hand_back: list[int] = []
    failed: list[tuple[int, str]] = []
    for index, job in enumerate(jobs):
        alone = apply_jobs([job])
        hand_back.extend(index for _ in alone.hand_back)
        failed.extend((index, error) for _, error in alone.failed)
    return BatchOutcome(tuple(hand_back), tuple(failed))


def _job_id(job: Any) -> str | None:
    if isinstance(job, Exhausted):
        job = job.job
    if isinstance(job, Unreadable):
        return job.task_id
    job_id = job.get("job_id") if isinstance(job, dict) else None
    return job_id if isinstance(job_id, str) else None


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


def _record_dead(exhausted: Exhausted) -> BatchOutcome:
    """Records a job whose every try failed as failed (500) and dead-letters it: the
    dead letter first, so a job that ended so always has one. If that cannot be done
    now, it goes back on the queue (and gets its tries again)."""
    started = time.monotonic()
    try:
        readable = _readable(exhausted.job)
        job = ContactJob.from_message(readable) if isinstance(readable, dict) else readable
        if not isinstance(job, ContactJob):
            return BatchOutcome()  # names no job: nothing to record it in
        record = board().pending(job.job_id) or {}
        owner, lane = record.get("callback"), record.get("callback_lane")
        record_dead_letter(
            engine(), job, readable, attempts=exhausted.attempts, error=exhausted.error,
            callback=CallbackRoute(owner, lane) if owner and lane else None,
        )  # fmt: skip
        outcomes = _process([replace(job, refusal=Refusal(500, PROCESSING_FAILED_MESSAGE))])
    except TRANSIENT_ERRORS:
        return BatchOutcome(hand_back=(0,))  # it comes back, and is tried again
    except Exception:
        log.exception(
            "could not record the job's failure; it goes back on the queue",
            extra={"job_id": _job_id(exhausted)},
        )
        return BatchOutcome(hand_back=(0,))
    if outcomes[0] is not None and not outcomes[0].replayed:  # else a try had committed
        log.error(
            "job dead-lettered: failed with 500 after %d tries (last: %s)",
            exhausted.attempts,
            exhausted.error,
            extra={"job_id": job.job_id, "attempts": exhausted.attempts, "error": exhausted.error},
        )
    _count([exhausted.job], outcomes, time.monotonic() - started)
    return BatchOutcome()


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
    max_attempts = _settings.job_max_attempts

    def run_batch(self, jobs: list[Any]) -> BatchOutcome:
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
    outcome = apply_jobs([job])
    if outcome.hand_back or outcome.failed:
        raise RuntimeError("job could not be applied now; try again")


@worker_process_shutdown.connect
def _forget_dead_process(pid: int | None = None, **_: Any) -> None:
    from prometheus_client import multiprocess

    if pid is not None and os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
