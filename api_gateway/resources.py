"""One resource per noun: contacts (enqueue), jobs (status), and the probes."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

import falcon
import orjson
import redis
from prometheus_client import CONTENT_TYPE_LATEST

from api_gateway.throttle import FailureThrottle, TooManyFailures
from api_gateway.waiting import JobWaiter, preferred_wait, prefers_async
from contacts_ingest.access.keys import KeyHolder
from contacts_ingest.access.webhooks import WebhookEndpoint, WebhookRejected
from contacts_ingest.infrastructure.metrics import ENQUEUE_FAILURES, RATE_LIMITED, SHED, scrape
from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.jobs.board import AdmissionRefusal, Idempotency, JobBoard
from contacts_ingest.jobs.callbacks import CallbackRoute
from contacts_ingest.jobs.job import ContactJob, Operation, new_job_id
from contacts_ingest.jobs.status import (
    FINAL_STATUSES,
    LATEST_US,
    PENDING_STATUSES,
    FinalJobLister,
    FinalJobReader,
    decode_cursor,
    encode_cursor,
    final_job_document,
    job_status,
    list_jobs,
    us_from_datetime,
)
from contacts_ingest.model.contact import ContactInvalid, parse_batch, parse_contact
from contacts_ingest.model.documents import (
    FieldError,
    Health,
    JobAccepted,
    JobList,
    JobStatus,
    Readiness,
)
from contacts_ingest.model.json_input import (
    DEPTH_MESSAGE,
    MAX_DEPTH,
    JsonRefused,
    could_nest_deeper_than,
    nests_deeper_than,
    read_body,
)


class DeliveryVerifier(Protocol):
    def endpoint_for(
        self, endpoint_id: str, headers: dict[str, str], read_body: Callable[[], bytes]
    ) -> WebhookEndpoint:
        """The endpoint (user and operation), or WebhookRejected; reads the body only for
        a live endpoint."""

    def seen_live(self, endpoint_id: str) -> bool:
        """Whether this process last saw the endpoint live, without asking PostgreSQL."""


log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
MAX_BATCH_BODY_BYTES = 10 * 1024 * 1024
# Retry-After of a write shed because the queue is full or Redis out of memory: long
# enough that a crowd of clients retrying does not keep it full.
SHED_RETRY_AFTER_SECONDS = 5
UNAVAILABLE_MESSAGE = "Service temporarily unavailable, try again"


@dataclass(frozen=True, slots=True)
class _Quota:
    name: str
    limit: int
    window: int
    message: str


_UPSERT_FLAGS: dict[str, Operation] = {
    "1": "upsert",
    "true": "upsert",
    "0": "create",
    "false": "create",
}


# RFC 8941 sf-string content (the IETF draft's form), also accepted without the quotes.
_IDEMPOTENCY_KEY = re.compile(r'^"?([\x20-\x21\x23-\x7e]{1,255})"?$')


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A key a request is idempotent under: the client's Idempotency-Key, or a webhook-id."""

    value: str
    header: str = "Idempotency-Key"
    # Keeps a webhook's ids and a client's keys apart even if their text matches.
    namespace: str = "client"


PROBLEM_KEY_REUSED = "/problems/idempotency-key-reused"


class IdempotencyProblem(falcon.HTTPError):
    """A 422 about the request's Idempotency-Key, with its problem ``type``."""

    def __init__(self, message: str) -> None:
        super().__init__(falcon.HTTP_422, description=message)
        self.problem_type = PROBLEM_KEY_REUSED


class InvalidRequest(falcon.HTTPBadRequest):
    """A 400 whose body lists every failing field under ``errors``."""

    def __init__(self, message: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(description=message)
        self.errors = errors or [FieldError(field="body", message=message)]


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _read_body(req: falcon.Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The raw JSON body, or the 4xx the reference and the contract prescribe."""
    if not _is_json(req.content_type):
        raise falcon.HTTPUnsupportedMediaType(description="Content-Type must be application/json")
    size = f"{limit >> 20} MiB" if limit >= 2**20 else f"{limit >> 10} KiB"
    too_large = f"Request body must be {size} or smaller"
    if req.content_length is not None and req.content_length > limit:
        raise falcon.HTTPContentTooLarge(description=too_large)
    # Without Content-Length (chunked), read the raw stream, still never past the limit.
    stream = req.bounded_stream if req.content_length is not None else req.stream
    raw: bytes = stream.read(limit + 1)
    if len(raw) > limit:
        raise falcon.HTTPContentTooLarge(description=too_large)
    return raw


def _decode(raw: bytes) -> object:
    try:
        return read_body(raw)
    except JsonRefused as refused:
        raise InvalidRequest(refused.message) from None


def _bound_depth(raw: bytes, body: object) -> None:
    """Refuse a body nested past 64 levels: after its own rules (a customFields too deep
    says so), before anything that recurses (the job's message) touches it."""
    if could_nest_deeper_than(raw, MAX_DEPTH) and nests_deeper_than(body, MAX_DEPTH):
        raise InvalidRequest(DEPTH_MESSAGE)


def _canonical(raw: bytes) -> bytes:
    """The JSON value of ``raw`` written one way (keys sorted, integers exact); ``raw``
    itself if it is not JSON the gateway reads."""
    try:
        value = read_body(raw)
    except JsonRefused:
        return raw
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, or nested past 254 levels
        if nests_deeper_than(value, MAX_DEPTH):
            return raw  # refused for its depth anyway
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _idempotency(
    key: IdempotencyKey | None, operation: Operation, raw: bytes
) -> Idempotency | None:
    """The request's idempotency key, hashed, with a fingerprint of what it asks for.

    The fingerprint is taken over the JSON value (keys sorted), so a client that
    re-serialises the same body differently is still recognised as repeating itself.
    """
    if key is None:
        return None
    match = _IDEMPOTENCY_KEY.match(key.value.strip())
    if match is None:
        message = f"{key.header} must be 1 to 255 printable ASCII characters"
        raise InvalidRequest(message, [FieldError(field=key.header, message=message)])
    return Idempotency(
        key_hash=hashlib.sha256(f"{key.namespace}:{match.group(1)}".encode()).hexdigest(),
        fingerprint=hashlib.sha256(operation.encode() + b"\n" + _canonical(raw)).hexdigest(),
    )


class ContactIntake:
    """Validate, count against the quota, enqueue: what every write route does once it
    knows the user."""

    def __init__(self, settings: Settings, board: JobBoard, waiter: JobWaiter) -> None:
        self._board = board
        self._waiter = waiter
        self._quotas = {
            False: _Quota(
                "writes", settings.rate_limit_writes, settings.rate_limit_window_seconds,
                settings.rate_limit_message,
            ),
            True: _Quota(
                "batches", settings.batch_rate_limit_requests,
                settings.batch_rate_limit_window_seconds, settings.batch_rate_limit_message,
            ),
        }  # fmt: skip

    def accept(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        *,
        user_id: str,
        operation: Callable[[], Operation],
        read_body: Callable[[], bytes],
        key: IdempotencyKey | None,
        batch: bool = False,
        respond_wait: int | None = 0,
        callback: CallbackRoute | None = None,
    ) -> None:
        """Answer 202 with a new (or, for a repeated key, the original) job, or the 4xx.

        A batch (``{"contacts": [...]}``) has its own quota; its items are validated one
        by one by the worker, so one bad contact does not refuse the others.
        ``respond_wait`` is how long to wait for the job's outcome (0: not at) unless
        the client's Prefer header says otherwise; None ignores Prefer too (never wait).
        With ``callback``, the job's outcome is also POSTed there once final.
        """
        quota = self._quotas[batch]
        job_id = new_job_id()
        requested: Operation = "create"
        body: object = None
        idempotency: Idempotency | None = None
        refusal: falcon.HTTPError | None = None
        try:
            requested = operation()
            raw = read_body()
            idempotency = _idempotency(key, requested, raw)
            body = _decode(raw)
            parse_batch(body) if batch else parse_contact(body)
            _bound_depth(raw, body)
        except falcon.HTTPError as exc:
            refusal = exc
        except ContactInvalid as invalid:
            refusal = InvalidRequest(invalid.message, invalid.errors)

        job = ContactJob(
            job_id=job_id,
            user_id=user_id,
            operation=requested,
            body=body,
            accepted_at_us=0,  # Redis's clock decides, at admission
            request_id=req.context.request_id,
            batch=batch,
        )
        # Every authenticated POST counts, valid or not, except the repeat of a request
        # already accepted under the same Idempotency-Key; only a valid one is queued,
        # in the same step.
        try:
            admission = self._board.admit(
                user_id=user_id,
                member=job_id,
                job=None if refusal else job,
                limit=(quota.limit, quota.window),
                idempotency=idempotency,
                quota=quota.name,
                callback=callback,
            )
        except redis.RedisError:
            ENQUEUE_FAILURES.inc()
            raise
        if admission.shed and admission.idempotency != "replay":
            if refusal is not None:
                raise refusal  # a request that could never be accepted says why
            SHED.labels(admission.shed.replace(" ", "_")).inc()
            raise falcon.HTTPServiceUnavailable(
                description=UNAVAILABLE_MESSAGE, retry_after=SHED_RETRY_AFTER_SECONDS
            )
        resp.set_header("RateLimit-Policy", f'"{quota.name}";q={quota.limit};w={quota.window}')
        resp.set_header(
            "RateLimit",
            f'"{quota.name}";r={admission.remaining or 0};t={admission.reset_seconds}',
        )
        if admission.idempotency == "replay" and admission.original is not None:
            resp.set_header("Idempotent-Replayed", "true")
            self._answer(req, resp, user_id, *admission.original, respond_wait=respond_wait)
            return
        if not admission.allowed:
            RATE_LIMITED.labels(quota.name).inc()
            raise falcon.HTTPTooManyRequests(
                description=quota.message, retry_after=admission.reset_seconds
            )
        if admission.idempotency == "reused":
            raise IdempotencyProblem(
                f"This {key.header if key else ''} was already used for a different request"
            )
        if refusal is not None:
            raise refusal
        log.info(
            "job accepted",
            extra={"job_id": job_id, "request_id": job.request_id, "operation": requested},
        )
        self._answer(req, resp, user_id, job_id, requested, respond_wait=respond_wait)

    def _answer(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        user_id: str,
        job_id: str,
        operation: Operation,
        *,
        respond_wait: int | None,
    ) -> None:
        """202 with the job; or, waiting (the client's ``Prefer: wait=N``, else the key's
        mode, unless the client prefers ``respond-async``), the job's own outcome if it
        is final in time, as the synchronous API would answer.

        Only so many requests wait at once (``WAIT_MAX_PER_USER``, ``WAIT_MAX_PER_PROCESS``);
        past that, the 202 at once, as without the preference. ``Preference-Applied``
        names only what the client itself asked for.
        """
        resp.location = f"/io/contacts/jobs/{job_id}"
        applied: str | None = None
        final = None
        if respond_wait is not None:
            prefer = req.get_header("Prefer")
            wait = preferred_wait(prefer)
            if wait is not None:
                applied = f"wait={wait}"
            elif prefers_async(prefer):
                wait, applied = 0, "respond-async"
            else:
                wait = respond_wait
            if wait:
                final = self._waiter.final_within(req, user_id, job_id, wait)[1]
        if final is None:
            resp.status = falcon.HTTP_202
            accepted: JobAccepted = {
                "data": {"job_id": job_id, "status": "queued", "operation": operation}
            }
            resp.media = accepted
            if applied == "respond-async":
                resp.set_header("Preference-Applied", applied)
            return
        if applied is not None:
            resp.set_header("Preference-Applied", applied)
        resp.status = falcon.code_to_http_status(final["code"])
        if final["status"] == "succeeded" and "counts" in final["result"]:  # a batch
            result = final["result"]
            resp.media = {"data": {"counts": result["counts"], "items": result["items"]}}
        elif final["status"] == "succeeded":
            resp.media = {"data": final["result"]["data"]}
        else:
            error = final["error"]
            resp.media = {"error": error["message"]}
            if error.get("errors"):
                resp.media["errors"] = error["errors"]


def _requested_operation(req: falcon.Request) -> Operation:
    """A keyed write's operation: ``?upsert=1`` (or true) upserts, otherwise create."""
    flag = req.get_param("upsert")
    if flag is None:
        return "create"
    operation = _UPSERT_FLAGS.get(flag.strip().lower())
    if operation is None:
        message = "upsert must be 1 or 0"
        raise InvalidRequest(message, [FieldError(field="upsert", message=message)])
    return operation


class ContactsResource:
    """POST /io/contacts/contacts (one contact) and, with ``batch``, .../batch (up to
    1,000 as one job): writes authenticated by the user's bearer key.

    A single write is answered as the key's mode says (``keys create --respond``, else
    ``RESPOND_DEFAULT``): the reference's synchronous answers for clients written
    against it. A batch is not in the reference: it waits only when asked to (Prefer).
    """

    def __init__(
        self, intake: ContactIntake, *, respond_default: int = 0, batch: bool = False
    ) -> None:
        self._intake = intake
        self._respond_default = respond_default
        self._batch = batch
        self._max_body = MAX_BATCH_BODY_BYTES if batch else MAX_BODY_BYTES

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        header = req.get_header("Idempotency-Key")
        holder: KeyHolder = req.context.key_holder
        respond = holder.respond_wait_seconds
        self._intake.accept(
            req,
            resp,
            user_id=req.context.user_id,
            operation=lambda: _requested_operation(req),
            read_body=lambda: _read_body(req, self._max_body),
            key=IdempotencyKey(header) if header is not None else None,
            batch=self._batch,
            respond_wait=0
            if self._batch
            else self._respond_default
            if respond is None
            else respond,
            callback=holder.callback,
        )


UPSERT_IN_WEBHOOK_URL = "upsert is fixed by the webhook endpoint; remove ?upsert from the URL"


def _no_upsert_in_url(
    req: falcon.Request, resp: falcon.Response, resource: object, params: dict[str, Any]
) -> None:
    """The signature does not cover the URL, so no part of it may choose the operation."""
    if "upsert" in req.params:
        raise InvalidRequest(
            UPSERT_IN_WEBHOOK_URL, [FieldError(field="upsert", message=UPSERT_IN_WEBHOOK_URL)]
        )


class WebhookResource:
    """POST /io/contacts/webhooks/{endpoint_id}: a write signed by a webhook source.

    Public (no bearer key): the Standard Webhooks signature authenticates it, and its
    webhook-id is the idempotency key, so a source's retries never make a second job.
    The endpoint fixes the operation; the answer is the 202 and the job, never stored
    contact data (``Prefer: wait`` does not apply: a source must not read the user's
    contacts). A delivery to an unknown or revoked endpoint is refused before its body
    is read; failures are throttled per client address like bearer keys.
    """

    public = True

    def __init__(
        self, intake: ContactIntake, verifier: DeliveryVerifier, throttle: FailureThrottle
    ) -> None:
        self._intake = intake
        self._verifier = verifier
        self._throttle = throttle

    @falcon.before(_no_upsert_in_url)
    def on_post(self, req: falcon.Request, resp: falcon.Response, endpoint_id: str) -> None:
        retry_after = self._throttle.retry_after(req.remote_addr)
        if retry_after is not None and not self._verifier.seen_live(endpoint_id):
            raise TooManyFailures(retry_after)
        headers = {
            name: req.get_header(name) or ""
            for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
        }
        # Read once, by the verifier, and only for a live endpoint; the intake reuses it.
        read_body = functools.cache(lambda: _read_body(req))
        try:
            endpoint = self._verifier.endpoint_for(endpoint_id, headers, read_body)
        except WebhookRejected:
            self._throttle.failed(req.remote_addr)
            raise falcon.HTTPUnauthorized(
                description="A valid webhook signature is required"
            ) from None
        req.context.user_id = endpoint.user_id
        self._intake.accept(
            req,
            resp,
            user_id=endpoint.user_id,
            operation=lambda: endpoint.operation,
            read_body=read_body,
            key=IdempotencyKey(headers["webhook-id"], header="webhook-id", namespace="webhook"),
            respond_wait=None,
            callback=endpoint.callback,
        )


class MetricsResource:
    """GET /metrics: Prometheus text format, summed over the gateway's processes."""

    public = True

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data = scrape()
        resp.content_type = CONTENT_TYPE_LATEST


class JobsResource:
    """GET /io/contacts/jobs (the caller's jobs, newest first, a page at a time) and
    GET /io/contacts/jobs/{job_id} (one job's status): to their owner only."""

    def __init__(
        self, board: JobBoard, final_job: FinalJobReader, final_jobs: FinalJobLister,
        waiter: JobWaiter,
    ) -> None:  # fmt: skip
        self._board = board
        self._final_job = final_job
        self._final_jobs = final_jobs
        self._waiter = waiter

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = _listing_query(req)
        documents, more = list_jobs(self._board, self._final_jobs, req.context.user_id, **query)
        listing: JobList = {"data": documents, "next_cursor": encode_cursor(more) if more else None}
        resp.media = listing

    def on_get_item(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        user_id = req.context.user_id
        document = job_status(self._board, self._final_job, job_id, user_id)
        wait = preferred_wait(req.get_header("Prefer"))
        if document is not None and wait and document["status"] not in FINAL_STATUSES:
            waited, final = self._waiter.final_within(req, user_id, job_id, wait)
            if waited:
                resp.set_header("Preference-Applied", f"wait={wait}")
            if final is not None:
                document = final_job_document(final)
            elif waited:
                document = job_status(self._board, self._final_job, job_id, user_id)
        elif document is not None and wait is not None:
            resp.set_header("Preference-Applied", f"wait={wait}")  # final already
        if document is None:
            # Another user's job is indistinguishable from one that does not exist.
            raise falcon.HTTPNotFound(description="Job not found")
        answer: JobStatus = {"data": document}
        resp.media = answer


MAX_PAGE = 100
DEFAULT_PAGE = 20
_LISTING_PROBLEMS = {
    "status": "status must be queued, processing, succeeded or failed",
    "since": "since must be an RFC 3339 date-time such as 2026-06-11T12:00:00Z"
    " (in a URL, write + as %2B)",
    "limit": f"limit must be an integer from 1 to {MAX_PAGE}",
    "cursor": "cursor must be the next_cursor of an earlier page",
}
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:[Zz]|[+-]\d{2}:\d{2})$"
)


def _listing_query(req: falcon.Request) -> dict[str, Any]:
    """The listing's parameters, or a 400 naming every bad one."""
    values: dict[str, str | None] = {}
    bad: list[str] = []
    for name in _LISTING_PROBLEMS:
        value = req.params.get(name)
        if isinstance(value, list):
            bad.append(name)
        else:
            values[name] = value
    query: dict[str, Any] = {"limit": DEFAULT_PAGE}
    status, since, limit, cursor = (values.get(n) for n in _LISTING_PROBLEMS)
    if status is not None:
        if status in (*PENDING_STATUSES, *FINAL_STATUSES):
            query["status"] = status
        else:
            bad.append("status")
    if since is not None:
        try:
            if not _RFC3339.match(since):
                raise ValueError(since)
            since_us = us_from_datetime(datetime.fromisoformat(since.upper()))
            # Every job was accepted after 1970; none after the year 9999.
            query["since_us"] = min(since_us, LATEST_US) if since_us > 0 else None
        except (ValueError, OverflowError):
            bad.append("since")
    if limit is not None:
        if limit.isascii() and limit.isdigit() and len(limit) <= 3 and 1 <= int(limit) <= MAX_PAGE:
            query["limit"] = int(limit)
        else:
            bad.append("limit")
    if cursor is not None:
        try:
            query["below"] = decode_cursor(cursor)
        except ValueError:
            bad.append("cursor")
    if bad:
        errors = [
            FieldError(field=name, message=_LISTING_PROBLEMS[name])
            for name in _LISTING_PROBLEMS
            if name in bad
        ]
        raise InvalidRequest(errors[0]["message"], errors)
    return query


class HealthResource:
    """GET /healthz: the process is alive. Touches nothing."""

    public = True

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        health: Health = {"status": "ok"}
        resp.media = health


class OpenApiResource:
    """GET /openapi.json: the OpenAPI 3.1 description of this API."""

    public = True

    def __init__(self, document: dict[str, Any]) -> None:
        self._body = orjson.dumps(document)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data = self._body
        resp.content_type = falcon.MEDIA_JSON


class ReadyResource:
    """GET /readyz: Redis and PostgreSQL answer; 503 naming the ones that do not.

    It also says whether new jobs are being refused (``admission``: "ok", "queue
    full", "out of memory" or "too few replicas"; ``status``: "shedding"), still with
    200: such a gateway answers at once, replays and job reads included, and every
    gateway refuses alike (they share one Redis), so taking them out of a load
    balancer would only turn its 503s into refused connections.
    """

    public = True

    def __init__(
        self,
        checks: Mapping[str, Callable[[], Any]],
        shedding: Callable[[], AdmissionRefusal | None],
    ) -> None:
        self._checks = checks
        self._shedding = shedding

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        results: dict[str, Literal["ok", "unavailable"]] = {}
        for name, check in self._checks.items():
            try:
                check()
                results[name] = "ok"
            except Exception as exc:
                log.warning("readiness check %s failed: %s", name, type(exc).__name__)
                results[name] = "unavailable"
        ready = all(v == "ok" for v in results.values())
        admission: AdmissionRefusal | Literal["ok", "unavailable"]
        try:
            admission = self._shedding() or "ok"
        except Exception as exc:
            log.warning("readiness check admission failed: %s", type(exc).__name__)
            admission = "unavailable"
        status: Literal["ready", "shedding", "unavailable"] = (
            ("ready" if admission == "ok" else "shedding") if ready else "unavailable"
        )
        resp.status = falcon.HTTP_200 if ready else falcon.HTTP_503
        readiness: Readiness = {"status": status, "checks": results, "admission": admission}
        resp.media = readiness
