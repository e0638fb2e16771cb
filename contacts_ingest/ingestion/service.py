"""The ingestion service: apply one contact job exactly once and record its outcome.

Takes plain data and an engine; knows nothing of Celery. The contact write and the
job's final status row commit in one transaction, so a redelivered job finds its
own row and changes nothing.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, RowMapping, TextClause, func, select, text, update

from contacts_ingest.infrastructure.schema import contact_jobs, contacts
from contacts_ingest.ingestion.retention import pruned_before
from contacts_ingest.jobs.board import JobBoard
from contacts_ingest.jobs.job import (
    ContactJob,
    InvalidJobMessage,
    Refusal,
    datetime_from_us,
    iso_timestamp,
)
from contacts_ingest.jobs.messages import json_bytes
from contacts_ingest.model.contact import (
    ContactInvalid,
    ContactRequest,
    FieldError,
    custom_fields_problem,
    parse_batch,
    parse_contact,
)

log = logging.getLogger(__name__)

DUPLICATE_MESSAGE = "A contact with this email already exists"


def contact_document(row: RowMapping) -> dict[str, Any]:
    """A stored contact in the API's response shape (the reference's fields, then ours)."""
    return {
        "id": row["id"],
        "email": row["email"],
        "first_name": row["first_name"],
        "last_name": row["last_name"],
        "phone": row["phone"],
        "company": row["company"],
        "job_title": row["job_title"],
        "social_profiles": row["social_profiles"],
        "status": row["status"],
        "lead_score": row["lead_score"],
        "created_at": iso_timestamp(row["created_at"]),
        "custom_fields": row["custom_fields"],
        "source": row["source"],
        "workspace_id": row["workspace_id"],
        "updated_at": iso_timestamp(row["updated_at"]),
    }


@dataclass(frozen=True, slots=True)
class Outcome:
    """A job's final outcome. ``replayed`` is True when it was recorded by an earlier delivery."""

    job_id: str
    status: str
    code: int
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    replayed: bool = False

    @classmethod
    def from_row(cls, row: RowMapping, *, replayed: bool) -> Outcome:
        return cls(
            job_id=row["job_id"],
            status=row["status"],
            code=row["code"],
            result=row["result"],
            error=row["error"],
            replayed=replayed,
        )


class _Rejected(Exception):
    """A final failure decided inside the transaction (duplicate email, merged limits)."""

    def __init__(self, code: int, message: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.errors = code, message, errors


def _failure(code: int, message: str, errors: list[FieldError] | None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if errors:
        error["errors"] = errors
    return error


def _refused(refusal: Refusal) -> _Applied:
    errors = [FieldError("body", refusal.message)] if refusal.code == 400 else None
    return "failed", refusal.code, None, _failure(refusal.code, refusal.message, errors), None


_KEYED_FIELDS = ("social_profiles", "custom_fields")

# A bounce or a complaint is a fact about the address, not a preference: no upsert
# moves a contact out of these (deliverability and anti-spam law depend on it).
SUPPRESSED_STATUSES = frozenset({"bounced", "complained"})


def _suppression_safe(current_status: str, changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` without a status change that would lift a suppression.

    An unsubscribed contact is re-subscribed only by a request naming
    ``status: subscribed`` itself (absent fields never change, defaults included).
    """
    if current_status in SUPPRESSED_STATUSES and changes.get("status", current_status) != (
        current_status
    ):
        return {k: v for k, v in changes.items() if k != "status"}
    return changes


def _versions_of(changes: dict[str, Any], accepted_at_us: int) -> dict[str, int]:
    """Which fields (and keys of the keyed fields) a job sets, stamped with its order."""
    versions: dict[str, int] = {}
    for field, value in changes.items():
        if field in _KEYED_FIELDS:
            versions.update({f"{field}.{key}": accepted_at_us for key in value})
        else:
            versions[field] = accepted_at_us
    return versions


def _newer_changes(
    current: RowMapping, changes: dict[str, Any], accepted_at_us: int
) -> tuple[dict[str, Any], dict[str, int]]:
    """The part of an upsert that no later-accepted job has already overwritten.

    Returns the column values to write (keyed fields merged key by key, a null
    value removing its key) and the field versions to store with them.
    """
    versions: dict[str, int] = dict(current["field_versions"])
    values: dict[str, Any] = {}
    for field, value in changes.items():
        if field in _KEYED_FIELDS:
            merged = dict(current[field])
            for key, item in value.items():
                if versions.get(f"{field}.{key}", 0) < accepted_at_us:
                    versions[f"{field}.{key}"] = accepted_at_us
                    if item is None:
                        merged.pop(key, None)
                    else:
                        merged[key] = item
            if merged != current[field]:
                values[field] = merged
        elif versions.get(field, 0) < accepted_at_us:
            versions[field] = accepted_at_us
            values[field] = value
    return values, versions


def _without_nulls(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _parsed(body: object) -> ContactRequest | ContactInvalid:
    try:
        return parse_contact(body)
    except ContactInvalid as invalid:
        return invalid


def _recordset_insert(table: str, columns: dict[str, str], fixed: dict[str, str]) -> TextClause:
    """``INSERT INTO table ... SELECT FROM json_to_recordset(:rows)``, in ``n`` order.

    The rows travel as one JSON array of objects (``_rows_parameter``), one key per
    column of ``columns`` (name: PostgreSQL type) plus their position ``n``; ``fixed``
    columns take one SQL expression for every row. The text is the same whatever the
    row count, so the driver parses it once and PostgreSQL keeps it prepared (a
    multi-row VALUES list is new text for every size), and the values need no
    per-element quoting in Python (psycopg's text arrays spent a quarter of a batch's
    time on that). Names and types are this module's constants.
    """
    names = ", ".join([*columns, *fixed])
    values = ", ".join([*(f"new.{name}" for name in columns), *fixed.values()])
    record = ", ".join(f"{name} {kind}" for name, kind in columns.items())
    return text(
        f"INSERT INTO {table} ({names}) SELECT {values} "  # noqa: S608 (constants only)
        f"FROM json_to_recordset(CAST(:rows AS json)) AS new({record}, n integer)"
        " ORDER BY new.n"
    )


def _rows_parameter(rows: list[dict[str, Any]]) -> dict[str, str]:
    return {"rows": json_bytes([{**row, "n": n} for n, row in enumerate(rows)]).decode()}


# Every column a create sets.
_CREATE_COLUMNS: dict[str, str] = {
    **dict.fromkeys(("id", "user_id", "email", "email_key", "first_name", "last_name"), "text"),
    **dict.fromkeys(("phone", "company", "job_title", "status", "source"), "text"),
    **dict.fromkeys(("social_profiles", "custom_fields", "field_versions"), "jsonb"),
    "workspace_id": "uuid",
}
# New contacts in acceptance order; an email's first occurrence wins (DO NOTHING skips
# a row whose key an earlier row of the same statement took).
_NEW_CONTACTS = str(
    _recordset_insert("contacts", _CREATE_COLUMNS, {"created_at": "now()", "updated_at": "now()"})
)
_INSERT_CONTACTS = text(
    _NEW_CONTACTS + " ON CONFLICT (user_id, email_key) DO NOTHING RETURNING *"
).columns(*contacts.c)
# The same, returning only what a batch reports per item.
_INSERT_CONTACT_IDS = text(
    _NEW_CONTACTS + " ON CONFLICT (user_id, email_key) DO NOTHING"
    " RETURNING id, user_id, email, email_key"
).columns(contacts.c.id, contacts.c.user_id, contacts.c.email, contacts.c.email_key)

_STATUS_COLUMNS: dict[str, str] = {
    **dict.fromkeys(("job_id", "user_id", "operation", "status", "contact_id"), "text"),
    **dict.fromkeys(("code", "attempts"), "integer"),
    **dict.fromkeys(("result", "error"), "json"),
    "request_id": "text",
    **dict.fromkeys(("accepted_at", "started_at"), "timestamptz"),
}
_INSERT_STATUS_ROWS = _recordset_insert(
    "contact_jobs", _STATUS_COLUMNS, {"finished_at": "clock_timestamp()"}
)


def _created_outcome(
    request: ContactRequest | ContactInvalid, row: RowMapping | None
) -> tuple[str, int, dict[str, Any] | None, dict[str, Any] | None]:
    """One create item's outcome, given the row its insert returned (or not)."""
    if isinstance(request, ContactInvalid):
        return "failed", 400, None, _failure(400, request.message, request.errors)
    if row is None:
        return "failed", 409, None, _failure(409, DUPLICATE_MESSAGE, None)
    return "succeeded", 201, {"code": 201, "data": contact_document(row)}, None


# Takes every job id's transaction-scoped advisory lock, in one fixed order.
_LOCK_JOBS = text(
    "SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT hashtextextended(j, 0) AS k"
    " FROM unnest(CAST(:job_ids AS text[])) AS j ORDER BY k) AS locks"
)

# A job's final status row: status, code, result, error, contact id.
_Applied = tuple[str, int, dict[str, Any] | None, dict[str, Any] | None, str | None]


class ContactIngestor:
    """Applies contact jobs to PostgreSQL, each exactly once."""

    def __init__(self, engine: Engine, board: JobBoard) -> None:
        self._engine = engine
        self._board = board

    def process(self, message: object) -> Outcome | None:
        """Apply the job in ``message`` unless an earlier delivery already did.

        Returns the job's final outcome, or None for a message that names no job
        (logged and dropped: there is no status row to write it to). Database
        errors propagate; the caller retries them.
        """
        return self.process_many([message])[0]

    def process_many(self, messages: Sequence[object]) -> list[Outcome | None]:
        """Apply the jobs in ``messages`` in one transaction, each exactly once.

        ``process`` for many jobs: one outcome per message, in order (None for a
        message naming no job; a job delivered twice in one call gets its outcome twice,
        the second time as replayed). A ``ContactJob`` may stand for its message; one
        with a ``refusal`` is not applied but fails with it. Every job's writes and final
        status row commit together, so a database error rolls all of them back and
        propagates. Jobs are applied in the order they were accepted.
        """
        jobs: dict[str, ContactJob] = {}
        order: list[str | None] = []
        for message in messages:
            try:
                job = (
                    message if isinstance(message, ContactJob) else ContactJob.from_message(message)
                )
            except InvalidJobMessage as exc:
                log.error("dropping unreadable job message", extra={"reason": str(exc)})
                order.append(None)
                continue
            jobs.setdefault(job.job_id, job)
            order.append(job.job_id)
        if not jobs:
            return [None] * len(order)
        started = datetime.now(UTC)
        ids = list(jobs)
        counted = dict(zip(ids, self._board.start_many(ids), strict=True))
        attempts = {job_id: max(1, n) for job_id, n in counted.items()}
        # Jobs without a Redis record: final already, or pruned (see _without_pruned).
        unrecorded = {job_id for job_id, n in counted.items() if n == 0}
        # Validation runs outside the transaction; a batch validates item by item inside.
        requests = {job.job_id: None if job.batch else _parsed(job.body) for job in jobs.values()}
        with self._engine.begin() as conn:
            outcomes = self._apply_once(
                conn, jobs, requests, started=started, attempts=attempts, unrecorded=unrecorded
            )
        self._board.forget_many(ids)
        for job_id, outcome in outcomes.items():
            log.info(
                "job already recorded" if outcome.replayed else "job finished",
                extra={
                    "job_id": job_id,
                    "request_id": jobs[job_id].request_id,
                    "status": outcome.status,
                    "code": outcome.code,
                    "attempts": attempts[job_id],
                },
            )
        answered: set[str] = set()
        results: list[Outcome | None] = []
        for named in order:
            if named is None or named not in outcomes:  # no job, or one pruned already
                results.append(None)
            elif named in answered:
                results.append(replace(outcomes[named], replayed=True))
            else:
                answered.add(named)
                results.append(outcomes[named])
        return results

    def _apply_once(
        self,
        conn: Connection,
        jobs: dict[str, ContactJob],
        requests: dict[str, ContactRequest | ContactInvalid | None],
        *,
        started: datetime,
        attempts: dict[str, int],
        unrecorded: set[str],
    ) -> dict[str, Outcome]:
        # Serialises concurrent deliveries of one job id (a visibility-timeout redelivery
        # racing the original): the second waits, then finds the first one's row. Locks
        # are taken in one statement, in a fixed order, so two workers cannot deadlock.
        conn.execute(_LOCK_JOBS, {"job_ids": list(jobs)})
        # Every delivery of a job carries its acceptance time: only the partitions of
        # these days are searched.
        times = [job.accepted_at_us for job in jobs.values()]
        done = conn.execute(
            select(contact_jobs).where(
                contact_jobs.c.job_id.in_(list(jobs)),
                contact_jobs.c.accepted_at.between(
                    datetime_from_us(min(times)), datetime_from_us(max(times))
                ),
            )
        )
        outcomes = {row["job_id"]: Outcome.from_row(row, replayed=True) for row in done.mappings()}
        pending = sorted(
            (job for job in jobs.values() if job.job_id not in outcomes),
            key=lambda job: job.accepted_at_us,
        )
        if unrecorded & {job.job_id for job in pending}:
            pending = self._without_pruned(conn, pending, unrecorded)
        applied = self._apply_in_order(conn, [job for job in pending if not job.refusal], requests)
        applied.update({job.job_id: _refused(job.refusal) for job in pending if job.refusal})
        rows: list[dict[str, Any]] = []
        for job in pending:
            status, code, result, error, contact_id = applied[job.job_id]
            outcomes[job.job_id] = Outcome(job.job_id, status, code, result, error)
            rows.append(
                {
                    "job_id": job.job_id,
                    "user_id": job.user_id,
                    "operation": job.operation,
                    "status": status,
                    "code": code,
                    "result": result,
                    "error": error,
                    "contact_id": contact_id,
                    "attempts": attempts[job.job_id],
                    "request_id": job.request_id,
                    "accepted_at": datetime_from_us(job.accepted_at_us),
                    "started_at": started,
                }
            )
        if rows:
            conn.execute(_INSERT_STATUS_ROWS, _rows_parameter(rows))
        return outcomes

    def _without_pruned(
        self, conn: Connection, pending: list[ContactJob], unrecorded: set[str]
    ) -> list[ContactJob]:
        """``pending`` without the jobs that were final and have been pruned since: no
        status row, no Redis record, accepted before the last prune. A late redelivery
        of one is logged and dropped, never applied a second time."""
        horizon = pruned_before(conn)  # read after the status rows: it cannot lag a prune
        if horizon is None:
            return pending
        kept = []
        for job in pending:
            if job.job_id in unrecorded and datetime_from_us(job.accepted_at_us) < horizon:
                log.warning(
                    "dropping a delivery of a job pruned already",
                    extra={"job_id": job.job_id, "request_id": job.request_id},
                )
            else:
                kept.append(job)
        return kept

    def _apply_in_order(
        self,
        conn: Connection,
        jobs: list[ContactJob],
        requests: dict[str, ContactRequest | ContactInvalid | None],
    ) -> dict[str, _Applied]:
        """Apply ``jobs`` (in acceptance order) as if one after another.

        Consecutive valid single creates go to PostgreSQL in one statement: within it,
        the first of them for an email wins, as it would one at a time.
        """
        applied: dict[str, _Applied] = {}
        creates: list[tuple[ContactJob, ContactRequest]] = []

        def create_all() -> None:
            rows = self._insert_new(
                conn, [(job.user_id, request, job.accepted_at_us) for job, request in creates]
            )
            for (job, request), row in zip(creates, rows, strict=True):
                status, code, result, error = _created_outcome(request, row)
                applied[job.job_id] = (status, code, result, error, row["id"] if row else None)
            creates.clear()

        for job in jobs:
            request = requests[job.job_id]
            if isinstance(request, ContactRequest) and job.operation == "create":
                creates.append((job, request))
                continue
            if isinstance(request, ContactInvalid):  # touches nothing: order is moot
                applied[job.job_id] = self._apply_single(conn, job, request)
                continue
            create_all()
            if request is None:
                applied[job.job_id] = self._apply_batch(conn, job)
            else:
                applied[job.job_id] = self._apply_single(conn, job, request)
        create_all()
        return applied

    def _apply_single(
        self, conn: Connection, job: ContactJob, request: ContactRequest | ContactInvalid
    ) -> _Applied:
        try:
            if isinstance(request, ContactInvalid):
                raise _Rejected(400, request.message, request.errors)
            if job.operation == "create":
                created = self._insert_new(conn, [(job.user_id, request, job.accepted_at_us)])[0]
                if created is None:
                    raise _Rejected(409, DUPLICATE_MESSAGE)
                row, code = created, 201
            else:
                row, code = self._upsert(conn, job, request)
        except _Rejected as rejected:
            error = _failure(rejected.code, rejected.message, rejected.errors)
            return "failed", rejected.code, None, error, None
        return "succeeded", code, {"code": code, "data": contact_document(row)}, None, row["id"]

    def _apply_batch(self, conn: Connection, job: ContactJob) -> _Applied:
        """Each contact of the batch on its own; the job succeeds with per-item results.

        Items count as accepted one microsecond apart, in order, so a later item of the
        batch wins over an earlier one for the same contact.
        """
        try:
            items = parse_batch(job.body)
        except ContactInvalid as invalid:
            return "failed", 400, None, _failure(400, invalid.message, invalid.errors), None
        counts = {"created": 0, "updated": 0, "failed": 0}
        results: list[dict[str, Any]] = []
        parsed = [_parsed(item) for item in items]
        created = self._create_many(conn, job, parsed) if job.operation == "create" else None
        for index, item in enumerate(items):
            request = parsed[index]
            contact: RowMapping | dict[str, Any] | None
            error: dict[str, Any] | None
            if isinstance(request, ContactInvalid):
                code, contact, error = 400, None, _failure(400, request.message, request.errors)
            elif created is not None:  # creates went in one statement; report each
                row = created[index]
                code, contact = (201, row) if row is not None else (409, None)
                error = None if row is not None else _failure(409, DUPLICATE_MESSAGE, None)
            else:
                one = replace(
                    job, body=item, accepted_at_us=job.accepted_at_us + index, batch=False
                )
                _, code, result, error, _ = self._apply_single(conn, one, request)
                contact = result["data"] if result else None
            if contact is not None:
                counts["created" if code == 201 else "updated"] += 1
                results.append(
                    {"index": index, "code": code, "id": contact["id"], "email": contact["email"]}
                )
            else:
                assert error is not None
                counts["failed"] += 1
                item_error = {"index": index, "code": code, "error": error["message"]}
                if "errors" in error:
                    item_error["errors"] = error["errors"]
                results.append(item_error)
        return "succeeded", 200, {"code": 200, "counts": counts, "items": results}, None, None

    def _create_many(
        self, conn: Connection, job: ContactJob, requests: list[ContactRequest | ContactInvalid]
    ) -> list[RowMapping | None]:
        """Insert every valid contact of a create batch in one statement.

        Returns, per item, its new row, or None (invalid, or its email exists: in the
        table already, or earlier in the batch, whose first occurrence wins).
        """
        valid = [
            (index, request)
            for index, request in enumerate(requests)
            if isinstance(request, ContactRequest)
        ]
        rows = self._insert_new(
            conn,
            [(job.user_id, request, job.accepted_at_us + index) for index, request in valid],
            whole=False,
        )
        outcome: list[RowMapping | None] = [None] * len(requests)
        for (index, _), row in zip(valid, rows, strict=True):
            outcome[index] = row
        return outcome

    def _insert_new(
        self,
        conn: Connection,
        items: list[tuple[str, ContactRequest, int]],
        *,
        whole: bool = True,
    ) -> list[RowMapping | None]:
        """Insert contacts (user id, request, acceptance time) that do not exist yet.

        One statement for all. Returns, per item, its new row (``whole``, or only its
        id, user id, email and email key), or None if the email already exists for that
        user: in the table, or earlier in ``items``, whose first occurrence wins.
        """
        if not items:
            return []
        rows: list[dict[str, Any]] = []
        ids = secrets.token_hex(12 * len(items))  # one call to the system's random source
        for n, (user_id, request, accepted_at_us) in enumerate(items):
            changes = request.changes()
            values: dict[str, Any] = dict.fromkeys(_CREATE_COLUMNS)
            values.update(changes)
            values.update(
                id="cnt_" + ids[24 * n : 24 * (n + 1)],
                user_id=user_id,
                email_key=request.email_key,
                social_profiles=_without_nulls(changes.get("social_profiles", {})),
                custom_fields=_without_nulls(changes.get("custom_fields", {})),
                status=changes.get("status") or request.status,
                field_versions=_versions_of(changes, accepted_at_us),
            )
            rows.append(values)
        inserted = {
            (row["user_id"], row["email_key"]): row
            for row in conn.execute(
                _INSERT_CONTACTS if whole else _INSERT_CONTACT_IDS, _rows_parameter(rows)
            ).mappings()
        }
        # Only an email's first occurrence gets the row.
        return [inserted.pop((user_id, request.email_key), None) for user_id, request, _ in items]

    def _upsert(
        self, conn: Connection, job: ContactJob, request: ContactRequest
    ) -> tuple[RowMapping, int]:
        locate = (
            select(contacts)
            .where(contacts.c.user_id == job.user_id, contacts.c.email_key == request.email_key)
            .with_for_update()
        )
        current = conn.execute(locate).mappings().first()
        if current is None:
            created = self._insert_new(conn, [(job.user_id, request, job.accepted_at_us)])[0]
            if created is not None:
                return created, 201
            # Another transaction created it between our look and our insert.
            current = conn.execute(locate).mappings().one()

        # Deliveries can arrive out of order (a redelivery after a newer job): a field
        # changes only if no job accepted later has set it already.
        changes = _suppression_safe(current["status"], request.changes())
        values, versions = _newer_changes(current, changes, job.accepted_at_us)
        if "custom_fields" in values:
            problem = custom_fields_problem(values["custom_fields"])
            if problem:
                raise _Rejected(400, problem, [FieldError("customFields", problem)])
        if not values and versions == current["field_versions"]:
            return current, 200  # entirely superseded by newer jobs: nothing to write
        row = (
            conn.execute(
                update(contacts)
                .where(contacts.c.id == current["id"])
                .values(
                    **values,
                    field_versions=versions,
                    version=contacts.c.version + 1,
                    updated_at=func.now(),
                )
                .returning(*contacts.c)
            )
            .mappings()
            .one()
        )
        return row, 200
