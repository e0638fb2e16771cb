"""``contacts-ingest import FILE``: stream a CSV or JSONL file into batch jobs.

Memory stays flat whatever the file's size: rows are read one at a time, sent in
batches of up to 1,000 through the internal producer, and at most ``window`` batches
are in flight; the oldest is awaited (its status polled) before the next is sent,
which also keeps the queue from swallowing a whole file at once. Each batch remembers
the file line of each of its rows, so errors are reported with their line numbers.

Each batch is sent under an idempotency key of its own, so the importer rides out a
Redis that is unreachable or fails over: a send that raised is sent again under the
same key (answered with the batch's job if it had been queued), and a batch whose job
is known nowhere any more (lost with a failed Redis master) is sent again.
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
# How long it waits before trying Redis again after an error or an unconfirmed send.
REDIS_PAUSE_SECONDS = 0.5


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


@dataclass(slots=True)
class _Sent:
    job_id: str
    lines: tuple[int, ...]  # the file line of each row (a CSV row may span lines)
    contacts: list[Any]  # kept to send again if the job is lost with a Redis master
    key: str


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
    on_redis_trouble: Callable[[float], None] = lambda seconds: None,
    wait: bool = True,
    window: int = 8,
    batch_size: int = BATCH_MAX_CONTACTS,
    poll_seconds: float = 0.2,
) -> Summary:
    """Send every row; wait for every batch to be final; return the counts.

    ``on_sent`` gets each batch's job id as it is enqueued. Without ``wait``, nothing
    is awaited: the summary then counts only what was sent and what never could be.
    ``on_stall`` is called once, with ``STALL_SECONDS``, if the oldest batch stays
    queued that long (no worker is taking jobs); ``on_redis_trouble`` once, with
    ``STALL_SECONDS``, if Redis stays unreachable (or its replicas do not confirm a
    batch, with ``REDIS_MIN_REPLICAS_ACK``) that long. The importer keeps trying.
    """
    summary = Summary()
    in_flight: deque[_Sent] = deque()
    stalled = False
    troubled_since: float | None = None
    told_of_trouble = False
    run = secrets.token_hex(8)  # with the batch's number, the key of each batch's send

    def trouble() -> None:
        """Redis failed us just now: wait a little, saying so once if it lasts."""
        nonlocal troubled_since, told_of_trouble
        now = time.monotonic()
        troubled_since = troubled_since or now
        if not told_of_trouble and now - troubled_since >= STALL_SECONDS:
            told_of_trouble = True
            on_redis_trouble(STALL_SECONDS)
        time.sleep(REDIS_PAUSE_SECONDS)

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
            except (NotReplicated, redis.ConnectionError, redis.TimeoutError):
                trouble()  # queued or not: sent again under its key, it is one job
                continue
            troubled_since = None
            return job_id

    def settle_oldest() -> None:
        nonlocal stalled, troubled_since
        sent = in_flight.popleft()
        since = time.monotonic()
        while True:
            try:
                status = producer.status(sent.job_id, user_id)
            except (redis.ConnectionError, redis.TimeoutError):
                trouble()
                continue
            troubled_since = None
            if status is None:  # known nowhere: lost with a Redis master that failed
                sent.job_id = enqueue(sent.contacts, sent.key)
                continue
            if status["status"] in ("succeeded", "failed"):
                break
            waited = time.monotonic() - since
            if not stalled and waited >= STALL_SECONDS and status["status"] == "queued":
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
            in_flight.append(_Sent(job_id, tuple(line for line, _ in rows), contacts, key))
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
