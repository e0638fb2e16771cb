"""Celery tasks: decode, call the service, done."""

from __future__ import annotations

from functools import cache
from typing import Any

import redis
from sqlalchemy.exc import InterfaceError, OperationalError

from contacts_ingest.database import make_engine
from contacts_ingest.ingest import ContactIngestor
from contacts_ingest.jobs import TASK_NAME, JobBoard
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
    return ContactIngestor(
        make_engine(_settings.database_url), JobBoard.for_settings(client, _settings)
    )


@app.task(
    name=TASK_NAME,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=_settings.retry_backoff_seconds,
    retry_backoff_max=_settings.retry_backoff_max_seconds,
    retry_jitter=True,
    max_retries=None,
)
def ingest_contact(job: Any) -> None:
    """Apply one contact job; its outcome is written to the status table."""
    ingestor().process(job)
