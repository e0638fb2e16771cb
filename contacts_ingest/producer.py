"""The Python call for internal producers: enqueue without HTTP and without the rate limit::

    from contacts_ingest.producer import ContactProducer

    producer = ContactProducer()  # reads DATABASE_URL, REDIS_URL, ... like the service
    job_id = producer.enqueue("user-42", {"email": "bob@example.com"}, upsert=True)
    producer.status(job_id, "user-42")  # {"job_id": ..., "status": "queued", ...}

Jobs are admitted through the same atomic Redis step as the gateway's, so a job is
queued and recorded at once, and shed like the gateway's (``JobsShed``: the queue is
full or Redis out of memory; retry later). The worker validates the body; a job that
breaks a rule ends ``failed`` with code 400.

A call that raised (Redis unreachable, the replicas' confirmation late) may have
queued its job all the same. Pass an ``idempotency_key`` and call again with the same
key: a job already admitted under it is answered (its id), never queued twice::

    job_id = producer.enqueue("user-42", body, idempotency_key="signup-7f3a")
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from contacts_ingest.infrastructure.database import make_engine
from contacts_ingest.infrastructure.redis_clients import redis_client
from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.jobs.board import Idempotency, JobBoard, JobsShed
from contacts_ingest.jobs.job import ContactJob, new_job_id
from contacts_ingest.jobs.status import job_status, read_final_job
from contacts_ingest.model.documents import Job


class IdempotencyKeyReused(ValueError):
    """The idempotency key was used already, for a job with another body or operation."""

    def __init__(self) -> None:
        super().__init__("this idempotency key was already used for a different job")


class ContactProducer:
    """Enqueues contact jobs from Python; their status is polled like any other job's."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings or Settings()
        self._board = JobBoard.for_settings(redis_client(self._settings), self._settings)
        self._engine = make_engine(self._settings.database_url, read_only=True, pool_size=1)

    def enqueue(
        self,
        user_id: str,
        contact: Any,
        *,
        upsert: bool = False,
        request_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Enqueue one create (or upsert) for ``user_id``; return the job id.

        ``contact`` is the request body as the HTTP API takes it. Nothing is
        validated here: the worker does, and records a 400 failure if it must. Raises
        ``JobsShed`` (nothing enqueued) while admissions are shed, and, with
        ``REDIS_MIN_REPLICAS_ACK``, ``NotReplicated`` (naming the job, which may be
        queued) if the replicas did not confirm it in time.

        With ``idempotency_key`` (the user's for 24 hours, apart from the HTTP API's
        keys), a call repeating an admitted one returns that job's id and queues
        nothing; the key used with another body or operation raises
        ``IdempotencyKeyReused``.
        """
        return self._enqueue(
            user_id, contact, upsert=upsert, request_id=request_id, key=idempotency_key
        )

    def enqueue_batch(
        self,
        user_id: str,
        contacts: Sequence[Any],
        *,
        upsert: bool = False,
        request_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Enqueue up to 1,000 contacts as one job; return its id.

        Its status reports counts (created, updated, failed) and one result per
        contact, in order, with field errors inline. Raises, and takes
        ``idempotency_key``, as ``enqueue`` does.
        """
        return self._enqueue(
            user_id,
            {"contacts": list(contacts)},
            upsert=upsert,
            request_id=request_id,
            key=idempotency_key,
            batch=True,
        )

    def _enqueue(
        self,
        user_id: str,
        body: Any,
        *,
        upsert: bool,
        request_id: str | None,
        key: str | None,
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
        admission = self._board.admit(
            user_id=user_id,
            member=job.job_id,
            job=job,
            limit=None,
            idempotency=None if key is None else _idempotency(key, job.operation, body),
        )
        if admission.idempotency == "reused":
            raise IdempotencyKeyReused
        if admission.original is not None:  # a replay: the job admitted under this key
            return admission.original[0]
        if admission.shed:
            raise JobsShed(admission.shed)
        return job.job_id

    def status(self, job_id: str, user_id: str) -> Job | None:
        """The job's status document, exactly as GET /io/contacts/jobs/<id> returns it."""
        return job_status(
            self._board, lambda jid: read_final_job(self._engine, jid), job_id, user_id
        )


def _idempotency(key: str, operation: str, body: Any) -> Idempotency:
    """A producer's key, kept apart from the HTTP API's (another namespace), and the
    fingerprint of what it enqueues."""
    try:
        content = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    except (TypeError, ValueError):  # not JSON's: the worker refuses it with a 400 anyway
        content = repr(body)
    return Idempotency(
        key_hash=hashlib.sha256(f"producer:{key}".encode()).hexdigest(),
        fingerprint=hashlib.sha256(f"{operation}\n{content}".encode()).hexdigest(),
    )
