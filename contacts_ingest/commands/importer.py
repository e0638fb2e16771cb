"""``contacts-ingest import FILE``: stream a CSV or JSONL file into batch jobs.

Memory stays flat whatever the file's size: rows are read one at a time, sent in
batches of up to 1,000 through the internal producer, and at most ``window`` batches
are in flight; the oldest is awaited (its status polled) before the next is sent,
which also keeps the queue from swallowing a whole file at once. Each batch remembers
the file line of each of its rows, so errors are reported with their line numbers.

Each batch is sent under an idempotency key of its own, so the importer rides out a
Redis that is unreachable or fails over: a send that raised is sent again under the
same key (answered with the batch's job if it had been queued), and status reads that
fail are read again. A batch whose job stays known nowhere (lost with a failed Redis
master, or pruned before it was read) is never sent again, since a worker may still
hold it: it is counted failed, its outcome unknown, and the import goes on.
"""

from __future__ import annotations

import csv
import json
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import redis
import sqlalchemy.exc
from redis.exceptions import AuthenticationError, AuthorizationError

from contacts_ingest.jobs.board import JobsShed, NotReplicated
from contacts_ingest.model.contact import BATCH_MAX_CONTACTS
from contacts_ingest.model.documents import BatchResult, Job
from contacts_ingest.producer import ContactProducer

Format = Literal["csv", "jsonl"]
FIRST_ERRORS = 10
# How long the oldest batch may stay queued before the importer says no worker took it.
STALL_SECONDS = 10.0
NOT_JSON_MESSAGE = "body: Request body must be valid JSON"
# How long the importer waits before sending again a batch that was shed.
SHED_PAUSE_SECONDS = 1.0
# How long it waits before trying again after an error or an unconfirmed send.
RETRY_PAUSE_SECONDS = 0.5
# How long a batch's job may be known nowhere before its outcome is given up as unknown
# (a worker that took it from a master that died may still be writing it).
LOST_SECONDS = 60.0
LOST_MESSAGE = (
    "batch job {job_id} was lost (a failed Redis master, or pruned before it was read):"
    " its rows may or may not have been written; import them again with --upsert"
)
# What a send or a status read retries; bad credentials (subclasses of ConnectionError
# in redis-py) are raised at once.
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, sqlalchemy.exc.OperationalError,
             sqlalchemy.exc.InterfaceError)  # fmt: skip


@dataclass
class Summary:
    accepted: int = 0
    created: int = 0
    updated: int = 0
    failed: int = 0
    # (line, message) of the first failures, in file order.
    first_errors: list[tuple[int, str]] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.created + self.updated + self.failed

    def note_error(self, line: int, message: str) -> None:
        """Keep the first errors in file order, whichever order they are learnt in."""
        self.first_errors.append((line, message))
        self.first_errors.sort()
        del self.first_errors[FIRST_ERRORS:]


@dataclass(frozen=True, slots=True)
class _Sent:
    job_id: str
    lines: tuple[int, ...]  # the file line of each row (a CSV row may span lines)


def format_of(path: Path, given: str | None) -> Format:
    name = (given or path.suffix.lstrip(".")).lower()
    if name in ("csv",):
        return "csv"
    if name in ("jsonl", "ndjson"):
        return "jsonl"
    raise ValueError("cannot tell the file's format: use --format csv or --format jsonl")


def _csv_rows(handle: Any) -> Iterator[tuple[int, Any]]:
    """(line, contact) per CSV row. Columns are the API's field names; ``socialProfiles.x``
    and ``customFields.x`` fill those objects; empty cells are left out."""
    reader = csv.DictReader(handle)
    line = reader.line_num + 1
    for row in reader:
        contact: dict[str, Any] = {}
        for column, value in row.items():
            if column is None or value in (None, ""):
                continue
            group, _, key = column.partition(".")
            if key and group in ("socialProfiles", "customFields"):
                contact.setdefault(group, {})[key] = value
            else:
                contact[column] = value
        yield line, contact
        line = reader.line_num + 1


class _NotJson:
    """A JSONL line that does not parse: reported by the importer, never sent."""


NOT_JSON = _NotJson()


def _jsonl_rows(handle: Any) -> Iterator[tuple[int, Any]]:
    """(line, contact) per non-blank line; ``NOT_JSON`` for a line that is not JSON."""
    for number, text in enumerate(handle, start=1):
        if not text.strip():
            continue
        try:
            yield number, json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            yield number, NOT_JSON


def count_rows(path: Path, kind: Format) -> int:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = _csv_rows(handle) if kind == "csv" else _jsonl_rows(handle)
        return sum(1 for _ in rows)


def import_file(
    path: Path,
    kind: Format,
    producer: ContactProducer,
    user_id: str,
    *,
    upsert: bool,
    on_progress: Callable[[Summary], None],
    on_stall: Callable[[float], None] = lambda seconds: None,
    on_sent: Callable[[str], None] = lambda job_id: None,
    on_unreachable: Callable[[float], None] = lambda seconds: None,
    wait: bool = True,
    window: int = 8,
    batch_size: int = BATCH_MAX_CONTACTS,
    poll_seconds: float = 0.2,
) -> Summary:
    """Send every row; wait for every batch to be final; return the counts.

    ``on_sent`` gets each batch's job id as it is enqueued. Without ``wait``, nothing
    is awaited: the summary then counts only what was sent and what never could be.
    ``on_stall`` is called once, with ``STALL_SECONDS``, if the oldest batch stays
    queued that long (no worker is taking jobs); ``on_unreachable`` once, with
    ``STALL_SECONDS``, if Redis or PostgreSQL stays unreachable (or Redis's replicas do
    not confirm a batch, with ``REDIS_MIN_REPLICAS_ACK``) that long. It keeps trying.
    """
    summary = Summary()
    in_flight: deque[_Sent] = deque()
    stalled = False
    troubled_since: float | None = None
    told_of_trouble = False
    run = secrets.token_hex(8)  # with the batch's number, the key of each batch's send

    def trouble(error: Exception) -> None:
        """A server failed us just now: wait a little, saying so once if it lasts."""
        nonlocal troubled_since, told_of_trouble
        if isinstance(error, (AuthenticationError, AuthorizationError)):
            raise error  # no retry logs in with other credentials
        now = time.monotonic()
        troubled_since = troubled_since or now
        if not told_of_trouble and now - troubled_since >= STALL_SECONDS:
            told_of_trouble = True
            on_unreachable(STALL_SECONDS)
        time.sleep(RETRY_PAUSE_SECONDS)

    def enqueue(contacts: list[Any], key: str) -> str:
        """The batch's job id, once Redis (and its replicas, if asked) have it."""
        nonlocal troubled_since
        while True:
            try:
                job_id = producer.enqueue_batch(
                    user_id, contacts, upsert=upsert, idempotency_key=key
                )
            except JobsShed:  # the queue is full: let workers catch up, then send again
                if wait and in_flight:
                    settle_oldest()
                else:
                    time.sleep(SHED_PAUSE_SECONDS)
                continue
            except (NotReplicated, *TRANSIENT) as error:
                trouble(error)  # queued or not: sent again under its key, it is one job
                continue
            troubled_since = None
            return job_id

    def settle_oldest() -> None:
        nonlocal stalled, troubled_since
        sent = in_flight.popleft()
        since = time.monotonic()
        lost_since: float | None = None
        while True:
            try:
                status = producer.status(sent.job_id, user_id)
            except TRANSIENT as error:
                trouble(error)
                continue
            troubled_since = None
            now = time.monotonic()
            if status is None:  # known nowhere, for now
                lost_since = lost_since or now
                if now - lost_since >= LOST_SECONDS:
                    summary.failed += len(sent.lines)
                    summary.note_error(sent.lines[0], LOST_MESSAGE.format(job_id=sent.job_id))
                    on_progress(summary)
                    return
                time.sleep(max(poll_seconds, RETRY_PAUSE_SECONDS))
                continue
            lost_since = None
            if status["status"] in ("succeeded", "failed"):
                break
            if not stalled and now - since >= STALL_SECONDS and status["status"] == "queued":
                stalled = True
                on_stall(STALL_SECONDS)
            time.sleep(poll_seconds)
        _count(summary, sent, status)
        on_progress(summary)

    batches = 0

    def send(rows: list[tuple[int, Any]]) -> None:
        nonlocal batches
        if wait and len(in_flight) >= window:
            settle_oldest()
        batches += 1
        key = f"import:{run}:{batches}"
        contacts = [row for _, row in rows]
        job_id = enqueue(contacts, key)
        on_sent(job_id)
        if wait:
            in_flight.append(_Sent(job_id, tuple(line for line, _ in rows)))
        summary.accepted += len(rows)

    with path.open(newline="", encoding="utf-8") as handle:
        rows = _csv_rows(handle) if kind == "csv" else _jsonl_rows(handle)
        chunk: list[tuple[int, Any]] = []
        for row in rows:
            if row[1] is NOT_JSON:
                summary.accepted += 1
                summary.failed += 1
                summary.note_error(row[0], NOT_JSON_MESSAGE)
                continue
            chunk.append(row)
            if len(chunk) == batch_size:
                send(chunk)
                chunk = []
        if chunk:
            send(chunk)
    while in_flight:
        settle_oldest()
    return summary


def _count(summary: Summary, sent: _Sent, status: Job) -> None:
    error, result = status["error"], status["result"]
    if status["status"] == "failed":  # the batch itself was refused
        assert error is not None
        summary.failed += len(sent.lines)
        summary.note_error(sent.lines[0], error["message"])
        return
    batch = cast(BatchResult, result)  # a batch job's outcome
    counts = batch["counts"]
    summary.created += counts["created"]
    summary.updated += counts["updated"]
    summary.failed += counts["failed"]
    noted = 0
    for item in batch["items"]:
        if noted >= FIRST_ERRORS:
            break
        if item["code"] >= 400:
            noted += 1
            fields = ", ".join(f"{e['field']}: {e['message']}" for e in item.get("errors", []))
            summary.note_error(sent.lines[item["index"]], fields or item["error"])
