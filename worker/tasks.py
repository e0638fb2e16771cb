"""Celery tasks: decode, call the service, done."""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject
from celery.signals import task_retry, worker_process_shutdown
from sqlalchemy.exc import InterfaceError, OperationalError

from contacts_ingest.database import make_engine
from contacts_ingest.ingest import ContactIngestor
from contacts_ingest.jobs import TASK_NAME, JobBoard
from contacts_ingest.metrics import JOB_SECONDS, JOBS, RETRIES
from contacts_ingest.metrics_dir import MULTIPROC_ENV
from contacts_ingest.settings import Settings
from worker.app import app

_settings = Settings()

# Only failures that a later attempt can overcome are retried; a job that breaks a rule
# is recorded as failed by the service and never raised here.
TRANSIENT_ERRORS = (OperationalError, InterfaceError, redis.ConnectionError, redis.TimeoutError)


@cache
def ingestor() -> ContactIngestor:
    """One ingestor per worker process, built lazily so no connection crosses a fork."""
    client = redis.Redis.from_url(_settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    # No ping before each job: a connection that died (a PostgreSQL restart) fails the
    # job with OperationalError, which is retried, and the pool replaces it.
    return ContactIngestor(
        make_engine(_settings.database_url, pre_ping=False),
        JobBoard.for_settings(client, _settings),
    )


class RedeliveredIfRetryFails(Task):  # type: ignore[misc]
    """A task whose retry, if it cannot be published, leaves the message to come back.

    Celery publishes a retry as a new message; when that fails (Redis is down too), it
    rejects the original without requeueing, which drops the job. Rejecting it with
    requeue instead keeps it: put back on the queue, or, if Redis cannot be reached,
    left in the unacked hash, from which a worker restores it after the visibility
    timeout.
    """

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().retry(*args, **kwargs)
        except Reject as refused:
            if refused.requeue:
                raise
            raise Reject(refused.reason, requeue=True) from None


@app.task(
    base=RedeliveredIfRetryFails,
    name=TASK_NAME,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=_settings.retry_backoff_seconds,
    retry_backoff_max=_settings.retry_backoff_max_seconds,
    retry_jitter=True,
    max_retries=None,
)
def ingest_contact(job: Any) -> None:
    """Apply one contact job; its outcome is written to the status table."""
    kind = "batch" if isinstance(job, dict) and job.get("batch") is True else "single"
    with JOB_SECONDS.labels(kind).time():
        outcome = ingestor().process(job)
    if outcome is not None and not outcome.replayed:
        JOBS.labels(outcome.status, str(outcome.code), kind).inc()


@task_retry.connect
def _count_retry(**_: Any) -> None:
    RETRIES.inc()


@worker_process_shutdown.connect
def _forget_dead_process(pid: int | None = None, **_: Any) -> None:
    from prometheus_client import multiprocess

    if pid is not None and os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
