"""The Python call for internal producers: enqueue without HTTP and without the rate limit::

    from contacts_ingest.producer import ContactProducer

    producer = ContactProducer()  # reads DATABASE_URL, REDIS_URL, ... like the service
    job_id = producer.enqueue("user-42", {"email": "bob@example.com"}, upsert=True)
    producer.status(job_id, "user-42")  # {"job_id": ..., "status": "queued", ...}

Jobs are admitted through the same atomic Redis step as the gateway's, so a job is
queued and recorded at once, and shed like the gateway's (``JobsShed``: the queue is
full or Redis out of memory; retry later). The worker validates the body; a job that
breaks a rule ends ``failed`` with code 400.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from contacts_ingest.infrastructure.database import make_engine
from contacts_ingest.infrastructure.redis_clients import redis_client
from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.jobs.board import JobBoard, JobsShed
from contacts_ingest.jobs.job import ContactJob, new_job_id
from contacts_ingest.jobs.status import job_status, read_final_job
from contacts_ingest.model.documents import Job


class ContactProducer:
    """Enqueues contact jobs from Python; their status is polled like any other job's."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings or Settings()
        self._board = JobBoard.for_settings(redis_client(self._settings), self._settings)
        self._engine = make_engine(self._settings.database_url, read_only=True, pool_size=1)

    def enqueue(
        self, user_id: str, contact: Any, *, upsert: bool = False, request_id: str | None = None
    ) -> str:
        """Enqueue one create (or upsert) for ``user_id``; return the job id.

        ``contact`` is the request body as the HTTP API takes it. Nothing is
        validated here: the worker does, and records a 400 failure if it must. Raises
        ``JobsShed`` (nothing enqueued) while admissions are shed, and, with
        ``REDIS_MIN_REPLICAS_ACK``, ``NotReplicated`` (naming the job, which may be
        queued) if the replicas did not confirm it in time.
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
        job = ContactJob(
            job_id=new_job_id(),
            user_id=user_id,
            operation="upsert" if upsert else "create",
            body=body,
            accepted_at_us=0,  # Redis's clock decides, at admission
            request_id=request_id,
            batch=batch,
        )
        admission = self._board.admit(user_id=user_id, member=job.job_id, job=job, limit=None)
        if admission.shed:
            raise JobsShed(admission.shed)
        return job.job_id

    def status(self, job_id: str, user_id: str) -> Job | None:
        """The job's status document, exactly as GET /io/contacts/jobs/<id> returns it."""
        return job_status(
            self._board, lambda jid: read_final_job(self._engine, jid), job_id, user_id
        )
