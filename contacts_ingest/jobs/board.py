"""The Redis side of a job's life: its admission, and its record until it is final.

Every producer (the gateway, internal producers, the importer, the benchmark) admits
through ``JobBoard.admit``: one atomic Redis step that checks the rate limit, settles
the request's Idempotency-Key, records the job and queues its Celery message, unless
admissions are shed (the queue full, or Redis out of memory). The scripts are the
``.lua`` files beside this module, each headed by its KEYS and ARGV, and by the flags
that say whether Redis runs it while over maxmemory: admission never does; what a
worker runs to finish jobs always does, so workers can drain a Redis that sheds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import redis

from contacts_ingest.infrastructure.redis_scripts import RedisScript
from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.jobs.callbacks import CallbackRoute
from contacts_ingest.jobs.job import (
    MAX_JOB_ID_CHARS,
    ContactJob,
    Operation,
    Refusal,
    operation_named,
)
from contacts_ingest.jobs.messages import CeleryMessages

# How long an Idempotency-Key is remembered once its request was accepted.
IDEMPOTENCY_TTL_SECONDS = 24 * 3600

# A job's place in its user's listing: (acceptance time in microseconds, job id).
Position = tuple[int, str]

# What admission says about a request's Idempotency-Key.
IdempotencyVerdict = Literal["new", "replay", "reused"]
# Why a new job was shed: the queue holds MAX_QUEUED_JOBS, or Redis is over maxmemory.
ShedReason = Literal["queue full", "out of memory"]
# Why new jobs would be refused right now (readiness): shed, or, with
# REDIS_MIN_REPLICAS_ACK, fewer replicas connected than it asks for (each new job then
# waits for them in vain and is answered 503).
AdmissionRefusal = ShedReason | Literal["too few replicas"]


class JobsShed(Exception):
    """The job was not admitted: admissions are shed for now (``reason``). Retry later."""

    def __init__(self, reason: ShedReason) -> None:
        super().__init__(f"jobs are not admitted for now ({reason}); retry later")
        self.reason: ShedReason = reason


class NotReplicated(Exception):
    """The job was admitted, but fewer replicas than ``REDIS_MIN_REPLICAS_ACK`` confirmed
    it in time: it may be queued, or lost if the master fails now. A retry with the
    same Idempotency-Key is safe (it is answered as a replay if the job is queued)."""

    def __init__(self, job_id: str, wanted: int, acknowledged: int) -> None:
        super().__init__(f"job {job_id}: {acknowledged} of {wanted} replica(s) confirmed it")
        self.job_id = job_id


@dataclass(frozen=True, slots=True)
class Idempotency:
    """A request's Idempotency-Key (already hashed) and the fingerprint of its content."""

    key_hash: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Admission:
    """What the atomic admission step decided."""

    allowed: bool
    # Writes left in the window (None when no limit applied).
    remaining: int | None
    # Seconds until the oldest counted write leaves the window (0 if none is counted).
    reset_seconds: int
    accepted_at_us: int
    # For a request with an Idempotency-Key: "replay" (an earlier request with this key
    # and content was accepted: see ``original``), "reused" (the key came with different
    # content), else "new".
    idempotency: IdempotencyVerdict = "new"
    # (job id, operation) of the accepted original, for a replay.
    original: tuple[str, Operation] | None = None
    # Set when the request was shed: nothing was counted, recorded or queued.
    shed: ShedReason | None = None


def _script(name: str) -> str:
    return (Path(__file__).parent / f"{name}.lua").read_text()


class JobBoard:
    """The Redis side of a job's life: admission, and its record until it is final.

    A job's record says ``queued`` from admission and ``processing`` once a worker
    took it; the worker deletes it after the final status row committed. While it
    exists, the job is also in its user's index of pending jobs (for listings).
    """

    def __init__(
        self,
        client: redis.Redis,
        messages: CeleryMessages,
        *,
        key_prefix: str,
        record_ttl_seconds: int,
        max_queued_jobs: int = 0,
        callback_ttl_seconds: int = 2 * 24 * 3600,
        min_replicas_ack: int = 0,
        replicas_ack_timeout_ms: int = 1000,
    ) -> None:
        self._redis = client
        self._messages = messages
        self._prefix = key_prefix
        self._ttl = record_ttl_seconds
        self._max_queued = max_queued_jobs
        self._callback_ttl = callback_ttl_seconds
        self._min_replicas = min_replicas_ack
        self._replicas_timeout_ms = replicas_ack_timeout_ms
        self._admit = RedisScript(client, _script("admit"))
        self._admit_readonly = RedisScript(client, _script("admit_readonly"))
        self._requeue = RedisScript(client, _script("requeue"))
        self._start = RedisScript(client, _script("start"))
        self._forget = RedisScript(client, _script("forget"))
        self._watch = RedisScript(client, _script("watch"))
        self._pending_page = RedisScript(client, _script("pending_page"))

    @classmethod
    def for_settings(cls, client: redis.Redis, settings: Settings) -> JobBoard:
        return cls(
            client,
            CeleryMessages(settings),
            key_prefix=settings.redis_key_prefix,
            record_ttl_seconds=settings.job_retention_days * 24 * 3600,
            max_queued_jobs=settings.max_queued_jobs,
            # A callback outlives its retries by a day, then nothing of it is left.
            callback_ttl_seconds=settings.callback_retry_window_seconds + 24 * 3600,
            min_replicas_ack=settings.redis_min_replicas_ack,
            replicas_ack_timeout_ms=settings.redis_replicas_ack_timeout_ms,
        )

    def record_key(self, job_id: str) -> str:
        return f"{self._prefix}job:{job_id}"

    def pending_index_key(self, user_id: str) -> str:
        return f"{self._prefix}pending:{user_id}"

    def quota_key(self, user_id: str, quota: str = "writes") -> str:
        name = "quota" if quota == "writes" else f"quota-{quota}"
        return f"{self._prefix}{name}:{user_id}"

    def idempotency_key(self, user_id: str, key_hash: str) -> str:
        return f"{self._prefix}idem:{user_id}:{key_hash}"

    def admit(
        self,
        *,
        user_id: str,
        member: str,
        job: ContactJob | None,
        limit: tuple[int, int] | None,
        idempotency: Idempotency | None = None,
        quota: str = "writes",
        callback: CallbackRoute | None = None,
    ) -> Admission:
        """Count one request and, with ``job`` (a valid request), record and queue it.

        ``member`` names the request in the user's window (the job id, for a job).
        ``limit`` is (requests, window_seconds); None admits without counting
        (internal producers). Without ``job`` the request is only counted (it was
        refused), and a refused or over-limit request records nothing. With
        ``idempotency``, a repeat of an accepted request is answered from its record
        without counting. An admitted job's message is on its queue when this returns;
        the job's ``accepted_at_us`` is ignored: Redis's clock decides it. With
        ``callback``, the job's outcome is POSTed there once it is final.

        A new job is shed (``shed`` says why; nothing counted, recorded or queued) when
        the queue holds ``max_queued_jobs`` already or Redis is over maxmemory; a
        replay is answered even then. Over maxmemory nothing is counted at all: a
        refused request gets its verdict (reused key, over the limit) uncounted.

        With ``min_replicas_ack`` of 1 or more, a new job (or the replay of one) counts
        as admitted only once that many replicas have it (WAIT, in the admission's round
        trip); else ``NotReplicated`` is raised (the job may still be queued).
        """
        writes, window = limit if limit else (0, 0)
        queue, head, tail = self._messages(job) if job else ("", b"", b"")
        idempotency_key = self.idempotency_key(user_id, idempotency.key_hash) if idempotency else ""
        fingerprint = idempotency.fingerprint if idempotency else ""
        admit: Callable[..., Any] = self._admit
        if job is not None and self._min_replicas:  # admitted once replicas have it
            admit = partial(self._admit_confirmed, job.job_id)
        try:
            answer = admit(
                keys=[
                    self.quota_key(user_id, quota),
                    self.record_key(job.job_id if job else ""),
                    idempotency_key,
                    queue,
                    self.pending_index_key(user_id),
                ],
                args=[
                    "1" if limit else "0",
                    writes,
                    window * 1_000_000,
                    member,
                    "1" if job else "0",
                    user_id,
                    job.operation if job else "create",
                    self._ttl,
                    fingerprint,
                    IDEMPOTENCY_TTL_SECONDS,
                    head,
                    tail,
                    callback.owner if callback else "",
                    callback.lane if callback else "",
                    self._max_queued,
                ],
            )
            shed: ShedReason = "queue full"
        except redis.exceptions.OutOfMemoryError:
            # Refused whole, before it ran: nothing was counted or written.
            answer = self._admit_readonly(
                keys=[self.quota_key(user_id, quota), idempotency_key],
                args=["1" if limit else "0", writes, window * 1_000_000, fingerprint],
            )
            shed = "out of memory"
        verdict, remaining, reset_us, now_us, original_id, original_op = answer
        verdicts: dict[int, IdempotencyVerdict] = {2: "replay", 3: "reused"}
        return Admission(
            allowed=verdict not in (0, 4),
            remaining=None if remaining < 0 else int(remaining),
            reset_seconds=max(1, -(-int(reset_us) // 1_000_000)) if reset_us > 0 else 0,
            accepted_at_us=int(now_us),
            idempotency=verdicts.get(int(verdict), "new"),
            original=(original_id.decode(), operation_named(original_op.decode()))
            if verdict == 2
            else None,
            shed=shed if verdict == 4 else None,
        )

    def _admit_confirmed(self, job_id: str, *, keys: list[Any], args: list[Any]) -> Any:
        """The admission script, then WAIT for ``min_replicas_ack`` replicas in the same
        round trip; ``NotReplicated`` if a new job, or the replay of one, was not
        confirmed in time (a refusal wrote nothing worth waiting for)."""
        answer, acknowledged = self._admit.replicated(
            keys,
            args,
            replicas=self._min_replicas,
            timeout_ms=self._replicas_timeout_ms,
            probe=f"{self._prefix}replicated",
        )
        verdict = int(answer[0])
        if verdict in (1, 2) and acknowledged < self._min_replicas:
            admitted = answer[4].decode() if verdict == 2 else job_id
            raise NotReplicated(admitted, self._min_replicas, acknowledged)
        return answer

    def shedding(self) -> AdmissionRefusal | None:
        """Why new jobs would be refused right now, or None (for readiness probes: one
        round trip)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.llen(self._messages.queue_key)
        pipe.info("memory")
        if self._min_replicas:
            pipe.info("replication")
        queued, memory, *replication = pipe.execute()
        if self._max_queued and queued >= self._max_queued:
            return "queue full"
        # What Redis compares with maxmemory (it leaves its AOF and replica buffers out).
        used = int(memory.get("used_memory", 0)) - int(memory.get("mem_not_counted_for_evict", 0))
        if 0 < int(memory.get("maxmemory", 0)) < used:
            return "out of memory"
        if replication and int(replication[0].get("connected_slaves", 0)) < self._min_replicas:
            return "too few replicas"
        return None

    def requeue(
        self, job: ContactJob, record_ttl_seconds: int, callback: CallbackRoute | None = None
    ) -> None:
        """Queue ``job`` again under its own id and acceptance time (a dead-lettered job an
        operator retries), its record saying queued, in its user's index of pending jobs;
        with ``callback``, called back again once final. Raises ``JobsShed`` while Redis
        is over maxmemory (the queue's length limit does not apply to an operator). Its
        message says it is a retry: its delivery may replace the job's 500 outcome."""
        queue, head, tail = self._messages(replace(job, retry=True))
        accepted = str(job.accepted_at_us).encode()
        try:
            self._requeue(
                keys=[self.record_key(job.job_id), queue, self.pending_index_key(job.user_id)],
                args=[
                    job.user_id,
                    job.operation,
                    job.accepted_at_us,
                    max(60, record_ttl_seconds),
                    head + accepted + tail,
                    job.job_id,
                    callback.owner if callback else "",
                    callback.lane if callback else "",
                ],
            )
        except redis.exceptions.OutOfMemoryError:
            raise JobsShed("out of memory") from None

    def start(self, job_id: str) -> int:
        """Mark the job as processing; return the attempt number (0 if it has no record)."""
        return int(self._start(keys=[self.record_key(job_id)]))

    def start_many(self, job_ids: list[str]) -> list[int]:
        """``start`` for many jobs in one round trip; attempt numbers in the same order."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            self._start(keys=[self.record_key(job_id)], client=pipe)
        return [int(n) for n in pipe.execute()]

    def completion_channel(self, job_id: str) -> str:
        return f"{self._prefix}done:{job_id}"

    def completion_pattern(self) -> str:
        return f"{self._prefix}done:*"

    def forget(self, job_id: str) -> None:
        """Drop the record: the job's final row has committed.

        A client waiting on the job (``watch``) is told on its completion channel, and
        the job's completion callback, if it has one, is queued.
        """
        self.forget_many([job_id])

    def forget_many(self, job_ids: list[str]) -> None:
        """``forget`` for many jobs in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            self._forget(
                keys=[self.record_key(job_id), self.completion_channel(job_id)],
                args=[self._prefix, job_id, self._callback_ttl],
                client=pipe,
            )
        pipe.execute()

    def pending_page(
        self,
        user_id: str,
        *,
        below: Position | None,
        since_us: int | None,
        status: str | None,
        limit: int,
        budget: int = 1000,
    ) -> tuple[list[tuple[str, dict[str, str]]], Position | None]:
        """Up to ``limit`` of the user's pending jobs, newest first (ties by job id, in
        byte order), strictly older than ``below``, accepted at ``since_us`` or later,
        in ``status`` (queued or processing) if given: (job id, record) pairs.

        Reads at most ``budget`` entries of the user's index. Also returns the position
        of the last entry read, or None if the index was read to its end: below that
        position nothing was looked at.
        """
        reply = self._pending_page(
            keys=[self.pending_index_key(user_id)],
            args=[
                self._prefix,
                below[0] if below else "+inf",
                below[1] if below else "",
                since_us if since_us is not None else "-inf",
                status or "",
                limit,
                budget,
            ],
        )
        items = [v.decode() for v in reply]
        frontier = (int(items[0]), items[1]) if items[0] else None
        jobs = [
            (
                items[i],
                {
                    "user_id": user_id,
                    "status": items[i + 1],
                    "operation": items[i + 2],
                    "accepted_at_us": items[i + 3],
                },
            )
            for i in range(2, len(items), 4)
        ]
        return jobs, frontier

    def watch(self, job_id: str) -> bool:
        """Ask to be told on the completion channel when the job is final.

        False if its record is already gone (it is final, or unknown): read the status
        row instead.
        """
        return bool(self._watch(keys=[self.record_key(job_id)]))

    def refused(self, job_id: str, refusal: Refusal) -> ContactJob | None:
        """The pending job ``job_id``, rebuilt from its record, to fail with ``refusal``
        (for a message that cannot be read); None if it has no record (it is final
        already, or unknown)."""
        record = self.pending(job_id) if 0 < len(job_id) <= MAX_JOB_ID_CHARS else None
        if record is None or not record.get("user_id") or not record.get("accepted_at_us"):
            return None
        return ContactJob(
            job_id=job_id,
            user_id=record["user_id"],
            operation=operation_named(record.get("operation", "")),
            body=None,
            accepted_at_us=int(record["accepted_at_us"]),
            refusal=refusal,
        )

    def pending(self, job_id: str) -> dict[str, str] | None:
        """The record of a job that is not final yet, or None."""
        raw: dict[bytes, bytes] = self._redis.hgetall(self.record_key(job_id))  # type: ignore[assignment]
        if not raw:
            return None
        return {k.decode(): v.decode() for k, v in raw.items()}
