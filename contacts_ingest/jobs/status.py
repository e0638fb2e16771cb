"""What clients see of a job: pending in Redis, then final in PostgreSQL.

A listing of a user's jobs reads both, newest first: by acceptance time (Redis's clock
at admission, in microseconds, the same in both places), ties by job id in byte order.
That position never changes, wherever the job is, so a cursor (the position of a page's
last job) never repeats or skips one: a job that finishes between two pages keeps its
place, and new jobs are newer than every cursor.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol, cast

import redis
from sqlalchemy import Engine, RowMapping, literal, select, tuple_

from contacts_ingest.infrastructure.schema import contact_jobs
from contacts_ingest.jobs.board import JobBoard, Position
from contacts_ingest.jobs.job import MAX_JOB_ID_CHARS, datetime_from_us, iso_timestamp
from contacts_ingest.model.documents import Job, JobState, Operation

FinalJobReader = Callable[[str], RowMapping | None]
_JOB_ID_SHAPE = re.compile(rf"^[A-Za-z0-9_-]{{1,{MAX_JOB_ID_CHARS}}}$")
PENDING_STATUSES = ("queued", "processing")
FINAL_STATUSES = ("succeeded", "failed")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def us_from_datetime(moment: datetime) -> int:
    """Microseconds since the epoch, exactly."""
    return (moment - _EPOCH) // _MICROSECOND


# The latest acceptance time a listing bound may name (datetimes end at year 9999).
LATEST_US = us_from_datetime(datetime(9999, 1, 1, tzinfo=UTC))


class FinalJobLister(Protocol):
    def __call__(
        self,
        user_id: str,
        *,
        below: Position | None,
        since_us: int | None,
        status: str | None,
        limit: int,
    ) -> list[RowMapping]:
        """``read_final_jobs`` with its engine."""


def read_final_jobs(
    engine: Engine,
    user_id: str,
    *,
    below: Position | None,
    since_us: int | None,
    status: str | None,
    limit: int,
) -> list[RowMapping]:
    """Up to ``limit`` final status rows of ``user_id``, newest first (ties by job id in
    byte order), strictly older than ``below``, accepted at ``since_us`` or later, with
    ``status`` (succeeded or failed) if given.

    The one query that lists status rows: it bounds ``accepted_at`` on both sides
    where it can (the table's index, and partitions by acceptance time, serve it).
    """
    job_key = contact_jobs.c.job_id.collate("C")
    query = select(contact_jobs).where(contact_jobs.c.user_id == user_id)
    if since_us is not None:
        query = query.where(contact_jobs.c.accepted_at >= datetime_from_us(since_us))
    if below is not None:
        moment = datetime_from_us(below[0])
        query = query.where(
            contact_jobs.c.accepted_at <= moment,
            tuple_(contact_jobs.c.accepted_at, job_key)
            < tuple_(literal(moment), literal(below[1]).collate("C")),
        )
    if status is not None:
        query = query.where(contact_jobs.c.status == status)
    query = query.order_by(contact_jobs.c.accepted_at.desc(), job_key.desc()).limit(limit)
    with engine.connect() as conn:
        return list(conn.execute(query).mappings())


def read_final_job(engine: Engine, job_id: str) -> RowMapping | None:
    """The final status row of ``job_id``, or None if no worker has finished it."""
    with engine.connect() as conn:
        return (
            conn.execute(select(contact_jobs).where(contact_jobs.c.job_id == job_id))
            .mappings()
            .first()
        )


def final_job_document(row: RowMapping) -> Job:
    """A final job as GET /io/contacts/jobs/<id> shows it."""
    return Job(
        job_id=row["job_id"],
        status=row["status"],
        operation=row["operation"],
        created_at=iso_timestamp(row["accepted_at"]),
        finished_at=iso_timestamp(row["finished_at"]),
        result=row["result"],
        error=row["error"],
    )


def pending_job_document(job_id: str, record: dict[str, str]) -> Job:
    """A not-yet-final job as GET /io/contacts/jobs/<id> shows it."""
    return Job(
        job_id=job_id,
        status=cast(JobState, record["status"]),
        operation=cast(Operation, record["operation"]),
        created_at=iso_timestamp(datetime_from_us(int(record["accepted_at_us"]))),
        finished_at=None,
        result=None,
        error=None,
    )


def job_status(board: JobBoard, final_job: FinalJobReader, job_id: str, user_id: str) -> Job | None:
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


def encode_cursor(position: Position) -> str:
    """An opaque cursor for ``position``."""
    return base64.urlsafe_b64encode(f"{position[0]}.{position[1]}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    """The position a cursor of ``encode_cursor`` names; ValueError for anything else."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.b64decode(padded, altchars=b"-_", validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("not a cursor") from None
    moment, _, job_id = text.partition(".")
    if not (moment.isdigit() and len(moment) <= 19 and _JOB_ID_SHAPE.match(job_id)):
        raise ValueError("not a cursor")
    if int(moment) > LATEST_US:
        raise ValueError("not a cursor")
    return int(moment), job_id


def list_jobs(
    board: JobBoard,
    final_jobs: FinalJobLister,
    user_id: str,
    *,
    status: str | None = None,
    since_us: int | None = None,
    below: Position | None = None,
    limit: int = 20,
) -> tuple[list[Job], Position | None]:
    """A page of the user's jobs (documents as GET /io/contacts/jobs/<id> shows them),
    newest first, and the position to continue below (None when there is no more).

    Pending jobs come from Redis, then final ones from PostgreSQL: a worker drops a
    job's record only after its final row committed, so in that order no job can be
    missed; one found in both is shown as final. A page may hold fewer than ``limit``
    jobs and still have a next one: a page reads a bounded part of the pending index.
    """
    pending: list[tuple[str, dict[str, str]]] = []
    final: list[RowMapping] = []
    bounds: list[Position] = []
    if status is None or status in PENDING_STATUSES:
        pending, frontier = board.pending_page(
            user_id, below=below, since_us=since_us, status=status, limit=limit + 1
        )
        if frontier is not None:
            bounds.append(frontier)
    if status is None or status in FINAL_STATUSES:
        final = final_jobs(user_id, below=below, since_us=since_us, status=status, limit=limit + 1)
        if len(final) > limit:
            last = final[-1]
            bounds.append((us_from_datetime(last["accepted_at"]), last["job_id"]))
    found: dict[str, tuple[Position, Job]] = {}
    for job_id, record in pending:
        found[job_id] = (
            (int(record["accepted_at_us"]), job_id),
            pending_job_document(job_id, record),
        )
    for row in final:
        position = (us_from_datetime(row["accepted_at"]), row["job_id"])
        found[row["job_id"]] = (position, final_job_document(row))
    # Only what lies above every source's frontier is known completely.
    floor = max(bounds) if bounds else None
    known = sorted(
        (
            item
            for item in found.values()
            if floor is None or _byte_order(item[0]) >= _byte_order(floor)
        ),
        key=lambda item: _byte_order(item[0]),
        reverse=True,
    )
    page = known[:limit]
    if len(known) > limit:
        return [document for _, document in page], page[-1][0]
    return [document for _, document in page], floor


def _byte_order(position: Position) -> tuple[int, bytes]:
    """Positions compared as the listing orders them: job ids by their bytes."""
    return position[0], position[1].encode()
