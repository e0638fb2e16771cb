"""What clients see of a job: pending in Redis, then final in PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import redis
from sqlalchemy import Engine, RowMapping, select

from contacts_ingest.infrastructure.schema import contact_jobs
from contacts_ingest.jobs.board import JobBoard
from contacts_ingest.jobs.job import MAX_JOB_ID_CHARS, datetime_from_us, iso_timestamp

FinalJobReader = Callable[[str], RowMapping | None]
_JOB_ID_SHAPE = re.compile(rf"^[A-Za-z0-9_-]{{1,{MAX_JOB_ID_CHARS}}}$")


def read_final_job(engine: Engine, job_id: str) -> RowMapping | None:
    """The final status row of ``job_id``, or None if no worker has finished it."""
    with engine.connect() as conn:
        return (
            conn.execute(select(contact_jobs).where(contact_jobs.c.job_id == job_id))
            .mappings()
            .first()
        )


def final_job_document(row: RowMapping) -> dict[str, Any]:
    """A final job as GET /io/contacts/jobs/<id> shows it."""
    return {
        "job_id": row["job_id"],
        "status": row["status"],
        "operation": row["operation"],
        "created_at": iso_timestamp(row["accepted_at"]),
        "finished_at": iso_timestamp(row["finished_at"]),
        "result": row["result"],
        "error": row["error"],
    }


def pending_job_document(job_id: str, record: dict[str, str]) -> dict[str, Any]:
    """A not-yet-final job as GET /io/contacts/jobs/<id> shows it."""
    return {
        "job_id": job_id,
        "status": record["status"],
        "operation": record["operation"],
        "created_at": iso_timestamp(datetime_from_us(int(record["accepted_at_us"]))),
        "finished_at": None,
        "result": None,
        "error": None,
    }


def job_status(
    board: JobBoard, final_job: FinalJobReader, job_id: str, user_id: str
) -> dict[str, Any] | None:
    """The job's status document for its owner; None if unknown or another user's.

    Reads Redis before PostgreSQL: a worker deletes the pending record only after
    the final row committed, so this order can never miss a job in between.
    """
    if not _JOB_ID_SHAPE.match(job_id):
        return None
    try:
        pending, redis_error = board.pending(job_id), None
    except redis.RedisError as exc:
        # A final job can still be answered from PostgreSQL while Redis is down.
        pending, redis_error = None, exc
    final = final_job(job_id)
    if final is not None:
        return final_job_document(final) if final["user_id"] == user_id else None
    if redis_error is not None:
        raise redis_error
    if pending is not None and pending["user_id"] == user_id:
        return pending_job_document(job_id, pending)
    return None
