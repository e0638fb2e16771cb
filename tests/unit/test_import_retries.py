"""The importer rides out Redis failing under it: every row ends in exactly one job.

The producer here is a stand-in with Redis's semantics for what the importer relies
on (an idempotency key answers the job admitted under it; a job lost with a master
takes its key with it, though a worker may still hold and write it), failing the ways
a real one does.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy.exc

from contacts_ingest.commands import importer
from contacts_ingest.commands.importer import import_file
from contacts_ingest.jobs.board import NotReplicated

ROWS = 25
BATCH = 10


class FlakyRedisProducer:
    def __init__(self) -> None:
        self.ids = (f"job_{n:032x}" for n in itertools.count(1))
        self.jobs: dict[str, Any] = {}  # job id -> its contacts, while known
        self.keys: dict[str, str] = {}  # idempotency key -> job id
        self.written: list[str] = []  # every email a job wrote, once per write
        self.failures: list[str | None] = []  # what each next call does first: see _fail
        self.lose_next_job = False
        self.held: dict[str, list[Any]] = {}  # lost jobs a worker still holds
        self.held_for = 0  # status reads until a held job is written and final

    def _fail(self) -> str | None:
        return self.failures.pop(0) if self.failures else None

    def enqueue_batch(
        self, user_id: str, contacts: list[Any], *, upsert: bool, idempotency_key: str
    ) -> str:
        failure = self._fail()
        if failure == "unreachable":
            raise redis.ConnectionError("connection refused")
        if failure == "wrong password":
            raise redis.AuthenticationError("invalid username-password pair")
        job_id = self.keys.get(idempotency_key)
        if job_id is None:
            job_id = self.keys[idempotency_key] = next(self.ids)
            self.jobs[job_id] = contacts
        if failure == "answer lost":  # queued, then the connection broke
            raise redis.ConnectionError("connection reset")
        if failure == "unconfirmed":
            raise NotReplicated(job_id, 1, 0)
        if self.lose_next_job:  # the master dies before a replica has it
            self.lose_next_job = False
            contacts = self.jobs.pop(job_id)
            del self.keys[idempotency_key]
            if self.held_for:
                self.held[job_id] = contacts
        return job_id

    def status(self, job_id: str, user_id: str) -> dict[str, Any] | None:
        failure = self._fail()
        if failure == "unreachable":
            raise redis.TimeoutError("timed out")
        if failure == "postgres restarting":
            raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("shutting down"))
        if job_id in self.held:
            self.held_for -= 1
            if self.held_for == 0:  # the worker that held it commits it now
                self.jobs[job_id] = self.held.pop(job_id)
        contacts = self.jobs.get(job_id)
        if contacts is None:
            return None
        if not isinstance(contacts, dict):  # the job runs now, once
            self.written += [contact["email"] for contact in contacts]
            items = [{"index": i, "code": 201} for i in range(len(contacts))]
            counts = {"created": len(contacts), "updated": 0, "failed": 0}
            self.jobs[job_id] = {"counts": counts, "items": items}
        return {"status": "succeeded", "error": None, "result": self.jobs[job_id]}


@pytest.fixture
def jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "contacts.jsonl"
    path.write_text("".join(f'{{"email": "row{i}@example.com"}}\n' for i in range(ROWS)))
    return path


@pytest.fixture(autouse=True)
def no_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importer, "RETRY_PAUSE_SECONDS", 0)
    monkeypatch.setattr(importer, "STALL_SECONDS", 0)
    monkeypatch.setattr(importer, "LOST_SECONDS", 0.05)


def run(path: Path, producer: FlakyRedisProducer, troubles: list[float]) -> importer.Summary:
    return import_file(
        path, "jsonl", producer, "user-1",  # type: ignore[arg-type]
        upsert=False, on_progress=lambda summary: None, on_unreachable=troubles.append,
        batch_size=BATCH, poll_seconds=0,
    )  # fmt: skip


EVERY_ROW = [f"row{i}@example.com" for i in range(ROWS)]


@pytest.mark.parametrize(
    "failures",
    [
        ["unreachable", "unreachable"],
        ["answer lost"],
        ["unconfirmed", "unconfirmed"],
        [None, "unreachable", "answer lost", "unreachable", "unconfirmed"],
        [None, None, None, "postgres restarting", "postgres restarting"],  # status reads
    ],
)
def test_a_send_that_failed_is_sent_again_as_the_same_job(
    jsonl: Path, failures: list[str | None]
) -> None:
    producer = FlakyRedisProducer()
    producer.failures = list(failures)
    troubles: list[float] = []
    summary = run(jsonl, producer, troubles)
    assert (summary.accepted, summary.created, summary.failed) == (ROWS, ROWS, 0)
    assert sorted(producer.written) == sorted(EVERY_ROW)
    assert len(producer.keys) == 3  # one job per batch of 10, 10, 5
    assert troubles == [0]  # said once, however long it lasted


def test_a_job_lost_with_the_redis_master_is_never_sent_again_and_counted_unknown(
    jsonl: Path,
) -> None:
    producer = FlakyRedisProducer()
    producer.lose_next_job = True
    troubles: list[float] = []
    summary = run(jsonl, producer, troubles)
    assert (summary.accepted, summary.created, summary.failed) == (ROWS, ROWS - BATCH, BATCH)
    assert sorted(producer.written) == sorted(EVERY_ROW[BATCH:])  # nothing written twice
    [(line, message)] = summary.first_errors
    assert line == 1
    assert message.startswith("batch job job_")
    assert message.endswith("may or may not have been written; import them again with --upsert")
    assert troubles == []


def test_a_lost_job_a_worker_still_holds_is_awaited_and_written_once(
    jsonl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importer, "LOST_SECONDS", 30)  # ends as soon as the job is final
    producer = FlakyRedisProducer()
    producer.lose_next_job = True
    producer.held_for = 3  # known nowhere for two reads, then final
    summary = run(jsonl, producer, [])
    assert (summary.created, summary.failed) == (ROWS, 0)
    assert sorted(producer.written) == sorted(EVERY_ROW)


def test_credentials_refused_are_raised_at_once(jsonl: Path) -> None:
    producer = FlakyRedisProducer()
    producer.failures = ["wrong password"]
    with pytest.raises(redis.AuthenticationError):
        run(jsonl, producer, [])


def test_a_healthy_redis_is_never_reported(jsonl: Path) -> None:
    troubles: list[float] = []
    producer = FlakyRedisProducer()
    assert run(jsonl, producer, troubles).created == ROWS
    assert troubles == []
