"""Contact jobs: their message, their admission in Redis, their status as clients see it.

A job id is born at admission and is, end to end, the Celery task id, the key of
the job's Redis record while it is pending, and the key of its final status row.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import redis

from contacts_ingest.settings import Settings

TASK_NAME = "contacts.ingest"
OPERATIONS = ("create", "upsert")
MAX_JOB_ID_CHARS = 64
MAX_USER_ID_CHARS = 200
Operation = Literal["create", "upsert"]


def _operation(name: str) -> Operation:
    if name == "upsert":
        return "upsert"
    return "create"


def new_job_id() -> str:
    """A fresh, unguessable job id (128 random bits)."""
    return "job_" + secrets.token_hex(16)


def datetime_from_us(micros: int) -> datetime:
    return datetime.fromtimestamp(micros / 1_000_000, tz=UTC)


def iso_timestamp(moment: datetime | None) -> str | None:
    """RFC 3339 in UTC with whole seconds, as the API reference writes timestamps."""
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class InvalidJobMessage(ValueError):
    """A message that does not even name a job and its user: it cannot be recorded."""


# What a job fails with when the worker cannot read its message, or cannot apply it.
UNREADABLE_MESSAGE = "The job's message could not be read"
APPLY_FAILED_MESSAGE = "The job could not be applied"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A job's final failure decided before it is applied: code and message as the
    job's ``error`` reports them."""

    code: int
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
        )


# How long an Idempotency-Key is remembered once its request was accepted, and how long
# it stays reserved while that request is still being accepted (a gateway that dies
# mid-request frees it after this long).
IDEMPOTENCY_TTL_SECONDS = 24 * 3600
IDEMPOTENCY_PENDING_SECONDS = 60

# What admission says about a request's Idempotency-Key.
IdempotencyVerdict = Literal["new", "replay", "in_progress", "reused"]


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
    # and content was accepted: see ``original``), "in_progress" (that request is still
    # being accepted), "reused" (the key came with different content), else "new".
    idempotency: IdempotencyVerdict = "new"
    # (job id, operation) of the accepted original, for a replay.
    original: tuple[str, Operation] | None = None


# One atomic step, on Redis's own clock: settle the request's Idempotency-Key, count
# the write against the user's rolling window (a sorted set of admission times) and,
# when admitted, record the job as queued and reserve the Idempotency-Key for it.
# A repeat of a request already accepted (or being accepted) under the same key counts
# nothing and is answered from its record; the same key with other content counts like
# any refused write. Either way the window's state comes back for the RateLimit headers.
# With a message (a whole Celery message whose accepted time is left as a placeholder),
# the same step also pushes it onto the queue: the job is accepted and queued at once,
# so its Idempotency-Key is settled at once too.
# KEYS: quota key, job record key, idempotency key ('' for none), queue key ('' for none).
# ARGV: apply_limit, limit, window_us, member, record_job, user_id, operation,
# record_ttl_s, fingerprint, idempotency_pending_s, message, idempotency_ttl_s.
# Returns {verdict, remaining, reset_us, now_us, original_job_id, original_operation};
# verdict: 1 admitted, 0 over the limit, 2 replay, 3 in progress, 4 key reused;
# remaining is -1 without a limit.
_ADMIT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local verdict = 1
local seen = {}
if KEYS[3] ~= '' then
  seen = redis.call('HMGET', KEYS[3], 'fingerprint', 'state', 'job_id', 'operation')
  if seen[1] then
    if seen[1] ~= ARGV[9] then verdict = 4
    elseif seen[2] ~= 'accepted' then verdict = 3
    else verdict = 2 end
  end
end
local original, original_op = seen[3] or '', seen[4] or ''
local remaining = -1
local reset = 0
if ARGV[1] == '1' then
  local limit = tonumber(ARGV[2])
  local window = tonumber(ARGV[3])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  local used = redis.call('ZCARD', KEYS[1])
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if verdict == 2 or verdict == 3 then
    if oldest[2] then reset = tonumber(oldest[2]) + window - now end
    return {verdict, math.max(0, limit - used), reset, now, original, original_op}
  end
  if used >= limit then
    return {0, 0, tonumber(oldest[2]) + window - now, now, '', ''}
  end
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
  remaining = limit - used - 1
  oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  reset = tonumber(oldest[2]) + window - now
end
if verdict ~= 1 then return {verdict, remaining, reset, now, original, original_op} end
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[2], 'user_id', ARGV[6], 'operation', ARGV[7],
             'status', 'queued', 'accepted_at_us', now, 'attempts', 0)
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[8]))
  local queued = KEYS[4] ~= ''
  if queued then
    local message = ARGV[11]
    local first, last = string.find(message, '__ACCEPTED_AT_US__', 1, true)
    message = string.sub(message, 1, first - 1) .. string.format('%.0f', now)
              .. string.sub(message, last + 1)
    redis.call('LPUSH', KEYS[4], message)
  end
  if KEYS[3] ~= '' then
    redis.call('HSET', KEYS[3], 'fingerprint', ARGV[9],
               'state', queued and 'accepted' or 'accepting',
               'job_id', ARGV[4], 'operation', ARGV[7])
    redis.call('EXPIRE', KEYS[3], tonumber(queued and ARGV[12] or ARGV[10]))
  end
end
return {1, remaining, reset, now, '', ''}
"""

# The request holding an Idempotency-Key was accepted (its job published): remember it.
# KEYS: idempotency key. ARGV: job id, ttl_s.
_SETTLE_SCRIPT = """
if redis.call('HGET', KEYS[1], 'job_id') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', 'accepted')
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""

# Drops a job's record once its final row committed, and tells a waiting client.
# KEYS: job record key, completion channel.
_FORGET_SCRIPT = """
if redis.call('HGET', KEYS[1], 'waiter') then redis.call('PUBLISH', KEYS[2], '1') end
return redis.call('DEL', KEYS[1])
"""

# Asks for a completion message when the job's record is dropped; 0 if it already was.
_WATCH_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'waiter', '1')
return 1
"""

# Frees an Idempotency-Key reserved for a job that was never published.
_RELEASE_SCRIPT = """
if redis.call('HGET', KEYS[1], 'job_id') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

# Marks a pending job as being processed and counts the attempt; 0 if no record exists.
_START_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'processing')
return redis.call('HINCRBY', KEYS[1], 'attempts', 1)
"""


# Hands a job to the workers' queue (Celery in production).
JobPublisher = Callable[[ContactJob], None]


class JobBoard:
    """The Redis side of a job's life: admission, and its record until it is final.

    A job's record says ``queued`` from admission and ``processing`` once a worker
    took it; the worker deletes it after the final status row committed.
    """

    def __init__(self, client: redis.Redis, *, key_prefix: str, record_ttl_seconds: int) -> None:
        self._redis = client
        self._prefix = key_prefix
        self._ttl = record_ttl_seconds
        self._admit = client.register_script(_ADMIT_SCRIPT)
        self._start = client.register_script(_START_SCRIPT)
        self._settle = client.register_script(_SETTLE_SCRIPT)
        self._release = client.register_script(_RELEASE_SCRIPT)
        self._forget = client.register_script(_FORGET_SCRIPT)
        self._watch = client.register_script(_WATCH_SCRIPT)

    @classmethod
    def for_settings(cls, client: redis.Redis, settings: Settings) -> JobBoard:
        return cls(
            client,
            key_prefix=settings.redis_key_prefix,
            record_ttl_seconds=settings.job_record_ttl_seconds,
        )

    def record_key(self, job_id: str) -> str:
        return f"{self._prefix}job:{job_id}"

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
        job: tuple[str, Operation] | None,
        limit: tuple[int, int] | None,
        idempotency: Idempotency | None = None,
        quota: str = "writes",
        enqueue: tuple[str, bytes] | None = None,
    ) -> Admission:
        """Count one write and, if ``job`` (job_id, operation) is given, record it as queued.

        ``limit`` is (writes, window_seconds); None admits without counting
        (internal producers). A refused write records nothing. With ``idempotency``,
        a repeat of an accepted request is answered from its record without counting,
        and an admitted job reserves the key until ``settle`` (or for 60 s). With
        ``enqueue`` (queue key, message from ``CeleryMessages``), an admitted job's
        message is pushed onto its queue in the same step, and its key settled.
        """
        job_id, operation = job if job else ("", "create")
        writes, window = limit if limit else (0, 0)
        idem_key = self.idempotency_key(user_id, idempotency.key_hash) if idempotency else ""
        verdict, remaining, reset_us, now_us, original_id, original_op = self._admit(
            keys=[
                self.quota_key(user_id, quota),
                self.record_key(job_id),
                idem_key,
                enqueue[0] if enqueue and job else "",
            ],
            args=[
                "1" if limit else "0",
                writes,
                window * 1_000_000,
                member,
                "1" if job else "0",
                user_id,
                operation,
                self._ttl,
                idempotency.fingerprint if idempotency else "",
                IDEMPOTENCY_PENDING_SECONDS,
                enqueue[1] if enqueue and job else b"",
                IDEMPOTENCY_TTL_SECONDS,
            ],
        )
        verdicts: dict[int, IdempotencyVerdict] = {2: "replay", 3: "in_progress", 4: "reused"}
        return Admission(
            allowed=verdict == 1,
            remaining=None if remaining < 0 else int(remaining),
            reset_seconds=max(1, -(-int(reset_us) // 1_000_000)) if reset_us > 0 else 0,
            accepted_at_us=int(now_us),
            idempotency=verdicts.get(int(verdict), "new"),
            original=(original_id.decode(), _operation(original_op.decode()))
            if verdict == 2
            else None,
        )

    def settle(self, user_id: str, idempotency: Idempotency, job_id: str) -> None:
        """The job reserved under ``idempotency`` was published: remember it for 24 h."""
        self._settle(
            keys=[self.idempotency_key(user_id, idempotency.key_hash)],
            args=[job_id, IDEMPOTENCY_TTL_SECONDS],
        )

    def release(self, user_id: str, idempotency: Idempotency, job_id: str) -> None:
        """The job reserved under ``idempotency`` was never published: free the key."""
        self._release(keys=[self.idempotency_key(user_id, idempotency.key_hash)], args=[job_id])

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
        """Drop the record: the job's final row has committed, or it was never published.

        A client waiting on the job (``watch``) is told on its completion channel.
        """
        self._forget(keys=[self.record_key(job_id), self.completion_channel(job_id)])

    def forget_many(self, job_ids: list[str]) -> None:
        """``forget`` for many jobs in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            self._forget(
                keys=[self.record_key(job_id), self.completion_channel(job_id)], client=pipe
            )
        pipe.execute()

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
            operation=_operation(record.get("operation", "")),
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
