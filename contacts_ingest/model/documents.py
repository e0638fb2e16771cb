"""The documents the API answers with: one definition per shape.

The ingestion builds contacts, job outcomes and errors as these types, the job status
reader builds jobs as them, and the OpenAPI document's response schemas are generated
from them (``response_schemas``), so a field added here appears everywhere at once.

They are TypedDicts, not models: a batch builds a thousand contacts per job, and a
plain dict costs nothing more to build; pydantic still writes their JSON Schema.

Imports nothing else of ours: the contact model imports its field errors from here.
"""

from __future__ import annotations

from typing import (
    Annotated,
    Any,
    Literal,
    NotRequired,  # pydantic needs it below 3.12
)

from pydantic import Field, TypeAdapter, WithJsonSchema
from typing_extensions import TypedDict

Timestamp = Annotated[
    str,
    WithJsonSchema({"type": "string", "format": "date-time", "examples": ["2026-06-11T12:00:00Z"]}),
]
NullableText = Annotated[str | None, WithJsonSchema({"type": ["string", "null"]})]
Count = Annotated[int, Field(ge=0)]
JobState = Literal["queued", "processing", "succeeded", "failed"]
Operation = Literal["create", "upsert"]
ContactStatus = Literal["subscribed", "unsubscribed", "bounced", "complained"]


class Contact(TypedDict):
    """A stored contact: the API reference's fields in its order, then ours."""

    id: Annotated[str, Field(pattern="^cnt_")]
    email: str
    first_name: NullableText
    last_name: NullableText
    phone: NullableText
    company: NullableText
    job_title: NullableText
    social_profiles: dict[str, str]
    status: ContactStatus
    lead_score: int
    created_at: Timestamp
    custom_fields: dict[str, Any]
    source: NullableText
    workspace_id: Annotated[
        str | None, WithJsonSchema({"type": ["string", "null"], "format": "uuid"})
    ]
    updated_at: Timestamp


# The contact document's fields, in the order the API writes them.
CONTACT_FIELDS: tuple[str, ...] = tuple(Contact.__annotations__)


class FieldError(TypedDict):
    """One failing field, as the API reports it."""

    field: str
    message: str


class Error(TypedDict):
    """Every 4xx and 5xx body."""

    error: str
    errors: NotRequired[list[FieldError]]
    type: NotRequired[
        Annotated[
            Literal["/problems/idempotency-key-reused"],
            Field(description="A problem type, on Idempotency-Key conflicts only."),
        ]
    ]


class BatchCounts(TypedDict):
    created: Count
    updated: Count
    failed: Count


class BatchItem(TypedDict):
    """One contact of a batch: its id and email, or why it failed."""

    index: Count
    code: ItemCode
    id: NotRequired[str]
    email: NotRequired[str]
    error: NotRequired[str]
    errors: NotRequired[list[FieldError]]


class ContactResult(TypedDict):
    """A single job's outcome: the contact it created (201) or updated (200)."""

    code: Literal[200, 201]
    data: Contact


class BatchResult(TypedDict):
    """A batch job's outcome."""

    code: Literal[200]
    counts: BatchCounts
    items: list[BatchItem]


JobErrorCode = Literal[400, 409, 500]
ItemCode = Literal[200, 201, 400, 409]


class JobError(TypedDict):
    """Why a job failed, with the code the synchronous API would have answered."""

    code: JobErrorCode
    message: str
    errors: NotRequired[list[FieldError]]


class Job(TypedDict):
    """A job as GET /io/contacts/jobs/<id> shows it."""

    job_id: str
    status: JobState
    operation: Operation
    created_at: Timestamp
    finished_at: Timestamp | None
    result: ContactResult | BatchResult | None
    error: JobError | None


class AcceptedJob(TypedDict):
    job_id: Annotated[str, Field(pattern="^job_")]
    status: Literal["queued"]
    operation: Operation


class JobAccepted(TypedDict):
    """The 202 of a write: the job queued."""

    data: AcceptedJob


class ContactAnswer(TypedDict):
    """A write answered synchronously (Prefer: wait)."""

    data: Contact


class BatchOutcome(TypedDict):
    counts: BatchCounts
    items: list[BatchItem]


class BatchAnswer(TypedDict):
    """A batch answered synchronously (Prefer: wait)."""

    data: BatchOutcome


class JobStatus(TypedDict):
    data: Job


class JobList(TypedDict):
    data: list[Job]
    next_cursor: Annotated[
        str | None,
        WithJsonSchema({"type": ["string", "null"]}),
        Field(
            description="Pass it as `cursor` for the next page; null when there is no more."
            " A page may hold fewer than `limit` jobs and still have a next one."
        ),
    ]


class Health(TypedDict):
    status: Literal["ok"]


class Readiness(TypedDict):
    status: Literal["ready", "shedding", "unavailable"]
    checks: dict[str, Literal["ok", "unavailable"]]
    admission: Annotated[
        Literal["ok", "queue full", "out of memory", "too few replicas", "unavailable"],
        Field(description="Whether new jobs are admitted, or refused (503) and why."),
    ]


# Every document a response carries whole, by the name the OpenAPI document gives it.
RESPONSES: tuple[type, ...] = (
    Error,
    ContactAnswer,
    BatchAnswer,
    JobAccepted,
    JobStatus,
    JobList,
    Health,
    Readiness,
)


def response_schemas(ref_template: str) -> dict[str, Any]:
    """The JSON Schema of every response document and of every document inside one,
    by class name; references between them follow ``ref_template``."""
    schemas: dict[str, Any] = {}
    for document in RESPONSES:
        schema = TypeAdapter(document).json_schema(ref_template=ref_template)
        schemas.update(schema.pop("$defs", {}))
        schemas[document.__name__] = schema
    return schemas
