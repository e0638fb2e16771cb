"""The ingestion service: apply contact jobs exactly once and record their outcomes.

Takes plain data and an engine; knows nothing of Celery. The contact writes and the
jobs' final status rows commit in one transaction, so a redelivered job finds its own
row and changes nothing.

Many jobs go in one transaction, set-based: every contact the jobs' upserts name is
locked and read in one statement, every job is applied in memory in acceptance order
(the rules are ``merge.py``'s), then all new contacts are written in one statement and
all changed ones in another. The outcomes are those of the jobs applied one by one.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    Connection,
    DateTime,
    Engine,
    Integer,
    Row,
    RowMapping,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    column,
    func,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSON, JSONB, UUID, Insert, insert
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import TableValuedAlias
from sqlalchemy.types import TypeEngine

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
    parse_batch,
    parse_contact,
)
from contacts_ingest.model.documents import (
    BatchCounts,
    BatchItem,
    BatchResult,
    Contact,
    ContactResult,
    FieldError,
    ItemCode,
    JobError,
    JobErrorCode,
)
from contacts_ingest.model.merge import CONTACT_COLUMNS, Changes, changes_of, new_contact, upsert

log = logging.getLogger(__name__)

DUPLICATE_MESSAGE = "A contact with this email already exists"

# The contacts a transaction writes share one updated_at (its start): format it once.
_timestamp = lru_cache(maxsize=1024)(iso_timestamp)


def contact_document(row: Mapping[str, Any]) -> Contact:
    """A stored contact in the API's response shape."""
    return Contact(
        id=row["id"],
        email=row["email"],
        first_name=row["first_name"],
        last_name=row["last_name"],
        phone=row["phone"],
        company=row["company"],
        job_title=row["job_title"],
        social_profiles=row["social_profiles"],
        status=row["status"],
        lead_score=row["lead_score"],
        created_at=_timestamp(row["created_at"]),
        custom_fields=row["custom_fields"],
        source=row["source"],
        workspace_id=row["workspace_id"],
        updated_at=_timestamp(row["updated_at"]),
    )


@dataclass(frozen=True, slots=True)
class Outcome:
    """A job's final outcome, as its status row records it.

    ``replayed`` is True when an earlier delivery recorded it; ``contact_id`` is the
    contact a single job created or updated.
    """

    job_id: str
    status: str
    code: int
    result: Mapping[str, Any] | None = None  # a ContactResult or a BatchResult
    error: JobError | None = None
    replayed: bool = False
    contact_id: str | None = None

    @classmethod
    def succeeded(
        cls, job_id: str, result: ContactResult | BatchResult, contact_id: str | None = None
    ) -> Outcome:
        return cls(job_id, "succeeded", result["code"], result, contact_id=contact_id)

    @classmethod
    def failed(
        cls, job_id: str, code: JobErrorCode, message: str, errors: list[FieldError] | None = None
    ) -> Outcome:
        error = JobError(code=code, message=message)
        if errors:
            error["errors"] = errors
        return cls(job_id, "failed", code, error=error)

    @classmethod
    def from_row(cls, row: RowMapping, *, replayed: bool) -> Outcome:
        return cls(
            job_id=row["job_id"],
            status=row["status"],
            code=row["code"],
            result=row["result"],
            error=row["error"],
            replayed=replayed,
            contact_id=row["contact_id"],
        )


# Statements. Rows travel as one JSON array of objects bound to one parameter and
# unpacked by json_to_recordset: the text is the same whatever the row count, so the
# driver parses it once and PostgreSQL keeps it prepared (a multi-row VALUES list is
# new text for every size), and the values need no per-element quoting in Python.


def _recordset(
    name: str, parameter: str, columns: Mapping[str, TypeEngine[Any]]
) -> TableValuedAlias:
    """``json_to_recordset(CAST(:parameter AS JSON)) AS name(<column> <type>, ...)``."""
    return (
        func.json_to_recordset(cast(bindparam(parameter), JSON))
        .table_valued(*(column(key, kind) for key, kind in columns.items()))
        .render_derived(name=name, with_types=True)
    )


def _recordset_insert(
    table: Table, columns: Mapping[str, TypeEngine[Any]], fixed: Mapping[str, ColumnElement[Any]]
) -> Insert:
    """``INSERT INTO table ... SELECT FROM json_to_recordset(:rows)``, in ``n`` order.

    The rows are one JSON array of objects (``_rows_parameter``), one key per column of
    ``columns`` plus their position ``n``; ``fixed`` columns take one SQL expression for
    every row.
    """
    new = _recordset("new", "rows", {**columns, "n": Integer()})
    return insert(table).from_select(
        [*columns, *fixed],
        select(*(new.c[name] for name in columns), *fixed.values()).order_by(new.c.n),
    )


def _rows_parameter(rows: list[dict[str, Any]]) -> dict[str, str]:
    """The ``rows`` of an insert, numbered ``n`` in the order given."""
    return {"rows": json_bytes([{**row, "n": n} for n, row in enumerate(rows)]).decode()}


_TEXT, _JSONB = Text(), JSONB()
# The columns of a contact that jobs set (its version included), as they travel.
_CONTACT_TYPES: dict[str, TypeEngine[Any]] = {
    **{name: _TEXT for name in CONTACT_COLUMNS},
    **dict.fromkeys(("social_profiles", "custom_fields", "field_versions"), _JSONB),
    "workspace_id": UUID(),
    "version": Integer(),
}
# Every column a new contact is given.
_NEW_CONTACT_TYPES = {"id": _TEXT, "user_id": _TEXT, "email_key": _TEXT, **_CONTACT_TYPES}
_INSERT_CONTACTS = (
    _recordset_insert(
        contacts, _NEW_CONTACT_TYPES, {"created_at": func.now(), "updated_at": func.now()}
    )
    .on_conflict_do_nothing(index_elements=["user_id", "email_key"])
    .returning(contacts.c.id, contacts.c.lead_score)
)

# Contacts changed by upserts: each row is the contact's whole new state.
_CHANGED = _recordset("changed", "rows", {"id": _TEXT, **_CONTACT_TYPES})
_UPDATE_CONTACTS = (
    update(contacts)
    .where(contacts.c.id == _CHANGED.c.id)
    .values({**{name: _CHANGED.c[name] for name in _CONTACT_TYPES}, "updated_at": func.now()})
)

# Locks and reads the contacts of some (user id, email key) pairs, in one fixed order.
# The JSON columns come as text: decoding them here costs a third of psycopg's loader,
# which passes each value through four Python calls (7 µs a contact for the three).
_COLUMN_NAMES = tuple(c.name for c in contacts.c)
_JSON_COLUMNS = tuple(c.name for c in contacts.c if isinstance(c.type, JSONB))
_WANTED = _recordset("wanted", "keys", {"user_id": _TEXT, "email_key": _TEXT})
_LOCK_CONTACTS = (
    select(*(cast(c, Text).label(c.name) if c.name in _JSON_COLUMNS else c for c in contacts.c))
    .join(
        _WANTED,
        and_(contacts.c.user_id == _WANTED.c.user_id, contacts.c.email_key == _WANTED.c.email_key),
    )
    .order_by(contacts.c.user_id, contacts.c.email_key)
    .with_for_update(of=contacts)
)

_INSERT_STATUS_ROWS = _recordset_insert(
    contact_jobs,
    {
        **dict.fromkeys(("job_id", "user_id", "operation", "status", "contact_id"), _TEXT),
        **dict.fromkeys(("code", "attempts"), Integer()),
        **dict.fromkeys(("result", "error"), JSON()),
        "request_id": _TEXT,
        **dict.fromkeys(("accepted_at", "started_at"), DateTime(timezone=True)),
    },
    {"finished_at": func.clock_timestamp()},
)

_JOB_IDS = cast(bindparam("job_ids"), ARRAY(Text))
# Takes every job id's transaction-scoped advisory lock, in one fixed order; each row
# also says now(), the time every write of the transaction stamps.
_LOCK_KEY = func.hashtextextended(func.unnest(_JOB_IDS).column_valued("j"), literal_column("0"))
_LOCKS = select(_LOCK_KEY.label("k")).distinct().order_by("k").subquery("locks")
_LOCK_JOBS = select(func.pg_advisory_xact_lock(_LOCKS.c.k), func.now())
# Every delivery of a job carries its acceptance time: only the partitions of the
# batch's acceptance days are searched (the status table is partitioned by day).
_DONE_JOBS = select(contact_jobs).where(
    contact_jobs.c.job_id == any_(_JOB_IDS),
    contact_jobs.c.accepted_at.between(bindparam("since"), bindparam("until")),
)


_decode = json.JSONDecoder().raw_decode


def _json_value(document: str) -> Any:
    """A JSON column's text decoded (the standard decoder: integers of any size stay)."""
    return {} if document == "{}" else _decode(document)[0]


Key = tuple[str, str]
"""(user id, email key): what makes a contact unique."""


@dataclass(frozen=True, slots=True)
class _Item:
    """One contact operation: a single job's contact, or one contact of a batch job."""

    job: ContactJob
    index: int  # in its batch; 0 for a single job
    request: ContactRequest | ContactInvalid
    changes: Changes
    key: Key  # of a valid request; ("", "") otherwise

    @property
    def accepted_at_us(self) -> int:
        # Items of a batch count as accepted one microsecond apart, in order.
        return self.job.accepted_at_us + self.index


def _item(job: ContactJob, index: int, body: object) -> _Item:
    try:
        request = parse_contact(body)
    except ContactInvalid as invalid:
        return _Item(job, index, invalid, {}, ("", ""))
    return _Item(job, index, request, changes_of(request), (job.user_id, request.email_key))


def _items_of(job: ContactJob) -> list[_Item] | ContactInvalid:
    """The job's contacts, validated; or why a batch job fails whole."""
    if not job.batch:
        return [_item(job, 0, job.body)]
    try:
        bodies = parse_batch(job.body)
    except ContactInvalid as invalid:
        return invalid
    return [_item(job, index, body) for index, body in enumerate(bodies)]


@dataclass(slots=True)
class _Contact:
    """A contact as this transaction leaves it: its columns, and how it got them."""

    columns: dict[str, Any]
    # Made by this transaction (not yet in the table), or read and locked from it.
    new: bool
    # Upserts that changed it in this transaction (its version grows by as many).
    writes: int = 0
    # What PostgreSQL filled in when writing it (timestamps, defaults); None until then.
    written: Mapping[str, Any] | None = None


@dataclass(slots=True)  # not frozen: a batch makes a thousand, and frozen ones cost twice
class _ItemResult:
    """What one item did: its code, and the contact as it left it, or why it failed."""

    code: ItemCode
    contact: _Contact | None = None
    # The contact's columns right after this item (a batch's items report id and email).
    columns: dict[str, Any] | None = None
    # Whether this transaction had written the contact by then.
    wrote: bool = False
    message: str | None = None
    errors: list[FieldError] | None = None

    def document(self) -> Contact:
        """The contact as this item left it, in the API's shape."""
        assert self.contact is not None
        assert self.columns is not None
        if self.wrote:
            assert self.contact.written is not None
            return contact_document({**self.columns, **self.contact.written})
        return contact_document(self.columns)


_DUPLICATE = _ItemResult(409, message=DUPLICATE_MESSAGE)


class _InMemory:
    """The contacts a transaction's items touch, as the items leave them.

    Starts from the contacts read (and locked) from the table; an item naming an email
    that is not among them makes a new contact.
    """

    def __init__(self, found: dict[Key, _Contact], items: int) -> None:
        self.contacts = found
        self._ids = secrets.token_hex(12 * items)  # one call to the system's random source
        self._made = 0

    def apply(self, item: _Item) -> _ItemResult:
        """Apply ``item`` after every item before it."""
        request = item.request
        if isinstance(request, ContactInvalid):
            return _ItemResult(400, message=request.message, errors=request.errors)
        key = item.key
        contact = self.contacts.get(key)
        code: ItemCode
        if contact is None:
            contact = self.contacts[key] = self._made_by(item, key)
            code = 201
        elif item.job.operation == "create":
            return _DUPLICATE
        else:
            # Deliveries can arrive out of order (a redelivery after a newer job): only
            # what no job accepted later has set changes.
            merge = upsert(contact.columns, item.changes, item.accepted_at_us)
            if merge.problem:
                return _ItemResult(
                    400,
                    message=merge.problem,
                    errors=[FieldError(field="customFields", message=merge.problem)],
                )
            if merge.values:
                contact.columns.update(merge.values)
                contact.columns["version"] += 1
                contact.writes += 1
            code = 200
        columns = contact.columns
        return _ItemResult(
            code,
            contact,
            {"id": columns["id"], "email": columns["email"]} if item.job.batch else dict(columns),
            wrote=contact.new or contact.writes > 0,
        )

    def _made_by(self, item: _Item, key: Key) -> _Contact:
        n, self._made = self._made, self._made + 1
        columns = new_contact(item.changes, item.accepted_at_us)
        columns["id"] = "cnt_" + self._ids[24 * n : 24 * (n + 1)]
        columns["user_id"], columns["email_key"] = key
        columns["version"] = 1
        return _Contact(columns, new=True)


class _CreatedMeanwhile(Exception):
    """A contact that an upsert would create was stored by another transaction after
    this one looked: roll back and apply again, which then finds it."""


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
        message naming no job; a job delivered twice in one call gets its outcome
        twice, the second time as replayed). A ``ContactJob`` may stand for its
        message; one with a ``refusal`` is not applied but fails with it. Every job's
        writes and final status row commit together, so a database error rolls all of
        them back and propagates. Jobs are applied in the order they were accepted,
        with the outcomes they would have one after another.
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
        # Validation runs outside the transaction; a refused job is never applied.
        items = {
            job_id: _refused(job.refusal) if job.refusal else _items_of(job)
            for job_id, job in jobs.items()
        }
        while True:  # each new attempt finds one more contact stored: this ends
            try:
                with self._engine.begin() as conn:
                    outcomes = self._apply_once(conn, jobs, items, started, attempts, unrecorded)
                break
            except _CreatedMeanwhile:
                log.info("a contact was created meanwhile by another transaction: again")
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
        items: dict[str, list[_Item] | ContactInvalid],
        started: datetime,
        attempts: dict[str, int],
        unrecorded: set[str],
    ) -> dict[str, Outcome]:
        # Serialises concurrent deliveries of one job id (a visibility-timeout redelivery
        # racing the original): the second waits, then finds the first one's row. Locks
        # are taken in one statement, in a fixed order, so two workers cannot deadlock.
        [(_, now), *_] = conn.execute(_LOCK_JOBS, {"job_ids": list(jobs)}).all()
        times = [job.accepted_at_us for job in jobs.values()]
        done = conn.execute(
            _DONE_JOBS,
            {
                "job_ids": list(jobs),
                "since": datetime_from_us(min(times)),
                "until": datetime_from_us(max(times)),
            },
        )
        outcomes = {row["job_id"]: Outcome.from_row(row, replayed=True) for row in done.mappings()}
        pending = sorted(
            (job for job in jobs.values() if job.job_id not in outcomes),
            key=lambda job: job.accepted_at_us,
        )
        if unrecorded & {job.job_id for job in pending}:
            pending = self._without_pruned(conn, pending, unrecorded)
        if not pending:
            return outcomes
        to_apply = [
            item for job in pending if isinstance(its := items[job.job_id], list) for item in its
        ]
        results = iter(self._apply_items(conn, to_apply, now))
        rows: list[dict[str, Any]] = []
        for job in pending:
            its = items[job.job_id]
            if job.refusal is not None:
                outcome = _refusal_outcome(job.job_id, job.refusal)
            elif isinstance(its, ContactInvalid):
                outcome = Outcome.failed(job.job_id, 400, its.message, its.errors)
            elif job.batch:
                outcome = _batch_outcome(job, [next(results) for _ in its])
            else:
                outcome = _single_outcome(job, next(results))
            outcomes[job.job_id] = outcome
            rows.append(
                {
                    "job_id": job.job_id,
                    "user_id": job.user_id,
                    "operation": job.operation,
                    "status": outcome.status,
                    "code": outcome.code,
                    "result": outcome.result,
                    "error": outcome.error,
                    "contact_id": outcome.contact_id,
                    "attempts": attempts[job.job_id],
                    "request_id": job.request_id,
                    "accepted_at": datetime_from_us(job.accepted_at_us),
                    "started_at": started,
                }
            )
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

    def _apply_items(
        self, conn: Connection, items: list[_Item], now: datetime
    ) -> list[_ItemResult]:
        """Apply ``items`` (in acceptance order) as if one after another; what each did.

        Every contact an upsert names is locked and read in one statement, the items
        are applied to them in memory (a create of an email that exists, or that an
        earlier item made, fails 409; an upsert creates, 201, or merges, 200), then
        all new contacts are inserted in one statement and all changed ones updated
        in another.
        """
        upserted = {
            item.key
            for item in items
            if item.job.operation == "upsert" and isinstance(item.request, ContactRequest)
        }
        found: dict[Key, _Contact] = {}
        if upserted:
            keys = [{"user_id": user_id, "email_key": key} for user_id, key in upserted]
            locked = conn.execute(_LOCK_CONTACTS, {"keys": json_bytes(keys).decode()})
            for row in locked:
                columns = dict(zip(_COLUMN_NAMES, row, strict=True))
                for name in _JSON_COLUMNS:
                    columns[name] = _json_value(columns[name])
                found[(row.user_id, row.email_key)] = _Contact(columns, new=False)
        memory = _InMemory(found, len(items))
        results = [memory.apply(item) for item in items]

        # Inserted in one order whatever the jobs' order: two transactions inserting
        # the same emails wait on each other in that order, never in a cycle.
        made = memory.contacts
        new = sorted(key for key, contact in made.items() if contact.new)
        if new:
            inserted = {
                row.id: row.lead_score for row in self._insert_new(conn, [made[k] for k in new])
            }
            for key in new:
                contact = made[key]
                if (lead_score := inserted.get(contact.columns["id"])) is not None:
                    contact.written = {
                        "lead_score": lead_score,
                        "created_at": now,
                        "updated_at": now,
                    }
                elif key in upserted:
                    raise _CreatedMeanwhile
        changed = [c for c in memory.contacts.values() if not c.new and c.writes]
        if changed:
            rows = [
                {"id": c.columns["id"], **{n: c.columns[n] for n in _CONTACT_TYPES}}
                for c in changed
            ]
            conn.execute(_UPDATE_CONTACTS, {"rows": json_bytes(rows).decode()})
            stamped = {"updated_at": now}
            for contact in changed:
                contact.written = stamped
        # A new contact the insert left out was created by a create of an email that no
        # upsert names, and another transaction stored that email first.
        return [
            _DUPLICATE if r.contact and r.contact.new and r.contact.written is None else r
            for r in results
        ]

    def _insert_new(self, conn: Connection, new: list[_Contact]) -> Sequence[Row[Any]]:
        """Insert ``new`` contacts in one statement, in the order given; return (id, lead
        score) of each one inserted. One whose email another transaction has stored is
        left out."""
        # A new contact's columns are exactly those the insert takes.
        return conn.execute(_INSERT_CONTACTS, _rows_parameter([c.columns for c in new])).all()


def _refused(refusal: Refusal) -> ContactInvalid:
    """What a refused job has to apply: nothing (it is never applied)."""
    return ContactInvalid([FieldError(field="body", message=refusal.message)])


def _refusal_outcome(job_id: str, refusal: Refusal) -> Outcome:
    errors = [FieldError(field="body", message=refusal.message)] if refusal.code == 400 else None
    return Outcome.failed(job_id, refusal.code, refusal.message, errors)


def _single_outcome(job: ContactJob, result: _ItemResult) -> Outcome:
    if result.contact is None:
        assert result.message is not None
        failed: JobErrorCode = 409 if result.code == 409 else 400  # a failed item's codes
        return Outcome.failed(job.job_id, failed, result.message, result.errors)
    assert result.code == 200 or result.code == 201
    return Outcome.succeeded(
        job.job_id,
        ContactResult(code=result.code, data=result.document()),
        result.contact.columns["id"],
    )


def _batch_outcome(job: ContactJob, items: list[_ItemResult]) -> Outcome:
    """A batch job succeeds, with counts and one result per contact."""
    counts = BatchCounts(created=0, updated=0, failed=0)
    results: list[BatchItem] = []
    for index, item in enumerate(items):
        if item.columns is not None:
            counts["created" if item.code == 201 else "updated"] += 1
            results.append(
                BatchItem(
                    index=index, code=item.code, id=item.columns["id"], email=item.columns["email"]
                )
            )
        else:
            counts["failed"] += 1
            assert item.message is not None
            failure = BatchItem(index=index, code=item.code, error=item.message)
            if item.errors:
                failure["errors"] = item.errors
            results.append(failure)
    return Outcome.succeeded(job.job_id, BatchResult(code=200, counts=counts, items=results))
