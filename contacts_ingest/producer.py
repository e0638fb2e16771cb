"""Enqueueing jobs: the Celery publisher, and the Python call for internal producers.

Internal producers enqueue without HTTP and without the rate limit::

    from contacts_ingest.producer import ContactProducer

    producer = ContactProducer()  # reads DATABASE_URL, REDIS_URL, ... like the service
    job_id = producer.enqueue("user-42", {"email": "bob@example.com"}, upsert=True)
    producer.status(job_id, "user-42")  # {"job_id": ..., "status": "queued", ...}

The worker validates the body; a job that breaks a rule ends ``failed`` with code 400.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from celery import Celery

from contacts_ingest.infrastructure.database import make_engine
from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.jobs.board import TASK_NAME, ContactJob, JobBoard, Operation, new_job_id
from contacts_ingest.jobs.status import job_status, read_final_job


def producer_celery(settings: Settings) -> Celery:
    """A Celery app for publishing only, configured like the workers' (celeryconfig)."""
    import celeryconfig

    celery = Celery("contacts-ingest")
    celery.config_from_object(celeryconfig)
    celery.conf.update(celeryconfig.from_settings(settings))
    return celery


class CeleryPublisher:
    """Publishes jobs as Celery tasks whose task id is the job id."""

    def __init__(self, celery: Celery, queue: str) -> None:
        self._celery = celery
        self._queue = queue

    def __call__(self, job: ContactJob) -> None:
        self._celery.send_task(
            TASK_NAME,
            kwargs={"job": job.to_message()},
            task_id=job.job_id,
            queue=self._queue,
            headers={"request_id": job.request_id},
            # Celery logs a task's arguments; a contact's personal data must not reach logs.
            argsrepr="()",
            kwargsrepr=f"{{job_id: {job.job_id}}}",
            retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2},
        )


class ContactProducer:
    """Enqueues contact jobs from Python; their status is polled like any other job's."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings or Settings()
        self._board = JobBoard.for_settings(
            redis.Redis.from_url(self._settings.redis_url), self._settings
        )
        self._publish = CeleryPublisher(
            producer_celery(self._settings), self._settings.celery_queue
        )
        self._engine = make_engine(self._settings.database_url, read_only=True, pool_size=1)

    def enqueue(
        self, user_id: str, contact: Any, *, upsert: bool = False, request_id: str | None = None
    ) -> str:
        """Enqueue one create (or upsert) for ``user_id``; return the job id.

        ``contact`` is the request body as the HTTP API takes it. Nothing is
        validated here: the worker does, and records a 400 failure if it must.
        """
        return self._enqueue(user_id, contact, upsert=upsert, request_id=request_id)

    def enqueue_batch(
        self,
        user_id: str,
        contacts: Sequence[Any],
        *,
        upsert: bool = False,
        request_id: str | None = None,
    ) -> str:
        """Enqueue up to 1,000 contacts as one job; return its id.

        Its status reports counts (created, updated, failed) and one result per
        contact, in order, with field errors inline.
        """
        return self._enqueue(
            user_id, {"contacts": list(contacts)}, upsert=upsert, request_id=request_id, batch=True
        )

    def _enqueue(
        self,
        user_id: str,
        body: Any,
        *,
        upsert: bool,
        request_id: str | None,
        batch: bool = False,
    ) -> str:
        job_id = new_job_id()
        operation: Operation = "upsert" if upsert else "create"
        admission = self._board.admit(
            user_id=user_id, member=job_id, job=(job_id, operation), limit=None
        )
        job = ContactJob(
            job_id, user_id, operation, body, admission.accepted_at_us, request_id, batch=batch
        )
        try:
            self._publish(job)
        except Exception:
            self._board.forget(job_id)
            raise
        return job_id

    def status(self, job_id: str, user_id: str) -> dict[str, Any] | None:
        """The job's status document, exactly as GET /io/contacts/jobs/<id> returns it."""
        return job_status(
            self._board, lambda jid: read_final_job(self._engine, jid), job_id, user_id
        )
