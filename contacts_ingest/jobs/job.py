"""A contact job: what travels from a producer to a worker.

A job id is born at admission and is, end to end, the Celery task id, the key of
the job's Redis record while it is pending, and the key of its final status row.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, get_args, overload

from contacts_ingest.model.documents import JobErrorCode
from contacts_ingest.model.documents import Operation as Operation  # where callers look

TASK_NAME = "contacts.ingest"
OPERATIONS: tuple[str, ...] = get_args(Operation)
MAX_JOB_ID_CHARS = 64
MAX_USER_ID_CHARS = 200


def operation_named(name: str) -> Operation:
    if name == "upsert":
        return "upsert"
    return "create"


def new_job_id() -> str:
    """A fresh, unguessable job id (128 random bits)."""
    return "job_" + secrets.token_hex(16)


def datetime_from_us(micros: int) -> datetime:
    return datetime.fromtimestamp(micros / 1_000_000, tz=UTC)


@overload
def iso_timestamp(moment: datetime) -> str: ...
@overload
def iso_timestamp(moment: None) -> None: ...
def iso_timestamp(moment: datetime | None) -> str | None:
    """RFC 3339 in UTC with whole seconds, as the API reference writes timestamps."""
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class InvalidJobMessage(ValueError):
    """A message that does not even name a job and its user: it cannot be recorded."""


# What a job fails with when the worker cannot read its message, or when every try at
# it failed unexpectedly (JOB_MAX_ATTEMPTS, each on its own): a bug, or a job that kills
# the process applying it. Clients see only this; operators have the dead-letter list.
UNREADABLE_MESSAGE = "The job's message could not be read"
PROCESSING_FAILED_MESSAGE = "The job could not be processed"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A job's final failure decided before it is applied: code and message as the
    job's ``error`` reports them."""

    code: JobErrorCode
    message: str


@dataclass(frozen=True, slots=True)
class ContactJob:
    """One create or upsert, as it travels from producer to worker."""

    job_id: str
    user_id: str
    operation: Operation
    body: object
    # Redis's clock at admission, in microseconds: the job's acceptance time and order.
    accepted_at_us: int
    request_id: str | None = None
    # A batch job's body is {"contacts": [...]}; each contact is created or upserted.
    batch: bool = False
    # Set by the worker, never by a message: the job fails with this and is not applied.
    refusal: Refusal | None = None
    # An operator's retry of a dead-lettered job (``contacts-ingest jobs retry``): its
    # delivery may replace the job's 500 outcome.
    retry: bool = False

    def to_message(self) -> dict[str, Any]:
        message = {
            "job_id": self.job_id,
            "user_id": self.user_id,
            "operation": self.operation,
            "body": self.body,
            "accepted_at_us": self.accepted_at_us,
            "request_id": self.request_id,
        }
        if self.batch:
            message["batch"] = True
        if self.retry:
            message["retry"] = True
        return message

    @classmethod
    def from_message(cls, message: object) -> ContactJob:
        """Decode a task argument; the body itself is validated later, by the contact model."""
        if not isinstance(message, dict):
            raise InvalidJobMessage("job message must be an object")
        job_id, user_id = message.get("job_id"), message.get("user_id")
        operation, accepted = message.get("operation"), message.get("accepted_at_us")
        request_id = message.get("request_id")
        if not (isinstance(job_id, str) and 0 < len(job_id) <= MAX_JOB_ID_CHARS):
            raise InvalidJobMessage(
                f"job_id must be a string of 1 to {MAX_JOB_ID_CHARS} characters"
            )
        if not (isinstance(user_id, str) and 0 < len(user_id) <= MAX_USER_ID_CHARS):
            raise InvalidJobMessage(
                f"user_id must be a string of 1 to {MAX_USER_ID_CHARS} characters"
            )
        if operation not in OPERATIONS:
            raise InvalidJobMessage("operation must be create or upsert")
        if not isinstance(accepted, int) or isinstance(accepted, bool) or accepted <= 0:
            raise InvalidJobMessage("accepted_at_us must be a positive integer")
        return cls(
            job_id=job_id,
            user_id=user_id,
            operation=operation,
            body=message.get("body"),
            accepted_at_us=accepted,
            request_id=request_id if isinstance(request_id, str) else None,
            batch=message.get("batch") is True,
            retry=message.get("retry") is True,
        )
