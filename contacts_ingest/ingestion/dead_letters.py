"""Dead-lettered jobs: those that failed unexpectedly on every try, and ended 500.

A job's processing that fails with an error that is neither a broken rule nor
transient (a bug), or that kills the process applying it, is tried again on its own,
up to ``JOB_MAX_ATTEMPTS`` times (worker/tasks.py, worker/batching.py). Then the worker
writes its dead letter (the job's message, the attempts, the last error's class) and
only then its final status row, failed with 500; a dead letter whose job's status row
is not that 500 (the worker stopped in between, or a try had committed after all) is
not listed.

An operator's retry queues the job again under its own id and acceptance time, marked
as a retry; the worker then removes the 500 row and the dead letter before it applies
the job (``revive``), so exactly-once holds and a success replaces the 500 outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, and_, delete, exists, select, tuple_
from sqlalchemy.dialects.postgresql import insert

from contacts_ingest.infrastructure.schema import contact_jobs, dead_jobs
from contacts_ingest.jobs.board import JobBoard
from contacts_ingest.jobs.callbacks import CallbackRoute
from contacts_ingest.jobs.job import ContactJob, InvalidJobMessage, datetime_from_us


@dataclass(frozen=True, slots=True)
class DeadJob:
    job_id: str
    user_id: str
    attempts: int
    # The class of the exception the last try ended with (WorkerLostError: it killed
    # the process).
    error: str
    failed_at: datetime
    accepted_at: datetime
    message: dict[str, Any] | None
    # Where its completion callback went (a retry's outcome goes there too), if anywhere.
    callback: CallbackRoute | None = None


# What a dead letter written again (the job retried and dead again) replaces.
_REWRITTEN = ("attempts", "error", "failed_at", "message", "callback_owner", "callback_lane")


def record_dead_letter(
    engine: Engine,
    job: ContactJob,
    message: object,
    *,
    attempts: int,
    error: str,
    callback: CallbackRoute | None = None,
) -> None:
    """Write (or rewrite) ``job``'s dead letter; ``message`` is its job message, if it
    was readable (a job may be retried only then), ``callback`` its completion callback's
    route, if it has one."""
    row = {
        "job_id": job.job_id,
        "accepted_at": datetime_from_us(job.accepted_at_us),
        "user_id": job.user_id,
        "attempts": attempts,
        "error": error[:200],
        "failed_at": datetime.now(UTC),
        "message": message if isinstance(message, dict) else None,
        "callback_owner": callback.owner if callback else None,
        "callback_lane": callback.lane if callback else None,
    }
    statement = insert(dead_jobs).values(row)
    statement = statement.on_conflict_do_update(
        index_elements=[dead_jobs.c.job_id, dead_jobs.c.accepted_at],
        set_={name: statement.excluded[name] for name in _REWRITTEN},
    )
    with engine.begin() as conn:
        conn.execute(statement)


# A dead letter counts while its job's status row is the 500 it ended with.
_ENDED_DEAD = exists().where(
    contact_jobs.c.job_id == dead_jobs.c.job_id,
    contact_jobs.c.accepted_at == dead_jobs.c.accepted_at,
    contact_jobs.c.status == "failed",
    contact_jobs.c.code == 500,
)


def list_dead_jobs(
    engine: Engine, *, user_id: str | None = None, job_ids: Sequence[str] | None = None
) -> list[DeadJob]:
    """The dead-lettered jobs, oldest failure first; only ``user_id``'s, or only these."""
    query = select(dead_jobs).where(_ENDED_DEAD).order_by(dead_jobs.c.failed_at)
    if user_id is not None:
        query = query.where(dead_jobs.c.user_id == user_id)
    if job_ids is not None:
        query = query.where(dead_jobs.c.job_id.in_(list(job_ids)))
    with engine.connect() as conn:
        return [
            DeadJob(
                job_id=row["job_id"],
                user_id=row["user_id"],
                attempts=row["attempts"],
                error=row["error"],
                failed_at=row["failed_at"],
                accepted_at=row["accepted_at"],
                message=row["message"],
                callback=CallbackRoute(row["callback_owner"], row["callback_lane"])
                if row["callback_owner"] and row["callback_lane"]
                else None,
            )
            for row in conn.execute(query).mappings()
        ]


class NotRetriable(ValueError):
    """A dead letter whose message could not be read: there is nothing to queue."""


def retry(board: JobBoard, dead: DeadJob, retention_days: int) -> None:
    """Queue ``dead`` again under its own id and acceptance time, as a retry. Its
    record lives out what is left of the retention period. Raises ``NotRetriable``, or
    ``JobsShed`` while Redis is over maxmemory."""
    try:
        job = ContactJob.from_message(dead.message)
    except InvalidJobMessage:
        raise NotRetriable(f"{dead.job_id}: its message could not be read") from None
    age = datetime.now(UTC) - dead.accepted_at
    board.requeue(job, int(retention_days * 24 * 3600 - age.total_seconds()), dead.callback)


def revive(engine: Engine, jobs: Sequence[ContactJob]) -> None:
    """Make ``jobs`` (operators' retries) applicable again: remove their 500 status rows
    and their dead letters, in one transaction. A job whose row is not a dead letter's
    500 (it succeeded meanwhile, or was never dead) is left as it is."""
    keys = [(job.job_id, datetime_from_us(job.accepted_at_us)) for job in jobs]
    if not keys:
        return
    with engine.begin() as conn:
        dead = select(dead_jobs.c.job_id, dead_jobs.c.accepted_at).where(
            tuple_(dead_jobs.c.job_id, dead_jobs.c.accepted_at).in_(keys), _ENDED_DEAD
        )
        found = [tuple(row) for row in conn.execute(dead)]
        if not found:
            return
        conn.execute(
            delete(contact_jobs).where(
                tuple_(contact_jobs.c.job_id, contact_jobs.c.accepted_at).in_(found),
                and_(contact_jobs.c.status == "failed", contact_jobs.c.code == 500),
            )
        )
        conn.execute(
            delete(dead_jobs).where(tuple_(dead_jobs.c.job_id, dead_jobs.c.accepted_at).in_(found))
        )
