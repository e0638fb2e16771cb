"""One resource per noun: contacts (enqueue), jobs (status), and the probes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import falcon
import orjson

from contacts_ingest.contact import ContactInvalid, FieldError, parse_contact
from contacts_ingest.jobs import ContactJob, JobBoard, JobPublisher, Operation, new_job_id
from contacts_ingest.settings import Settings
from contacts_ingest.status import FinalJobReader, job_status

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
_UPSERT_FLAGS: dict[str, Operation] = {
    "1": "upsert",
    "true": "upsert",
    "0": "create",
    "false": "create",
}


class InvalidRequest(falcon.HTTPBadRequest):
    """A 400 whose body lists every failing field under ``errors``."""

    def __init__(self, message: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(description=message)
        self.errors = errors or [FieldError("body", message)]


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _read_json_body(req: falcon.Request) -> object:
    """The decoded JSON body, or the 4xx the reference and the contract prescribe."""
    if not _is_json(req.content_type):
        raise falcon.HTTPUnsupportedMediaType(description="Content-Type must be application/json")
    if req.content_length is not None and req.content_length > MAX_BODY_BYTES:
        raise falcon.HTTPContentTooLarge(description="Request body must be 64 KiB or smaller")
    # Without Content-Length (chunked), read the raw stream, still never past the limit.
    stream = req.bounded_stream if req.content_length is not None else req.stream
    raw = stream.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise falcon.HTTPContentTooLarge(description="Request body must be 64 KiB or smaller")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("Request body must be valid JSON") from None


class ContactsResource:
    """POST /io/contacts/contacts: validate, count against the quota, enqueue."""

    def __init__(self, settings: Settings, board: JobBoard, publish: JobPublisher) -> None:
        self._board = board
        self._publish = publish
        self._limit = (settings.rate_limit_writes, settings.rate_limit_window_seconds)
        self._limit_message = settings.rate_limit_message
        self._policy = (
            f'"writes";q={settings.rate_limit_writes};w={settings.rate_limit_window_seconds}'
        )

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        user_id: str = req.context.user_id
        job_id = new_job_id()
        operation: Operation = "create"
        body: object = None
        refusal: falcon.HTTPError | None = None
        try:
            operation = self._operation(req)
            body = _read_json_body(req)
            parse_contact(body)
        except falcon.HTTPError as exc:
            refusal = exc
        except ContactInvalid as invalid:
            refusal = InvalidRequest(invalid.message, invalid.errors)

        # Every authenticated POST counts, valid or not; only a valid one is recorded.
        admission = self._board.admit(
            user_id=user_id,
            member=job_id,
            job=None if refusal else (job_id, operation),
            limit=self._limit,
        )
        resp.set_header("RateLimit-Policy", self._policy)
        resp.set_header(
            "RateLimit", f'"writes";r={admission.remaining or 0};t={admission.reset_seconds}'
        )
        if not admission.allowed:
            raise falcon.HTTPTooManyRequests(
                description=self._limit_message, retry_after=admission.reset_seconds
            )
        if refusal is not None:
            raise refusal

        job = ContactJob(
            job_id=job_id,
            user_id=user_id,
            operation=operation,
            body=body,
            accepted_at_us=admission.accepted_at_us,
            request_id=req.context.request_id,
        )
        try:
            self._publish(job)
        except Exception:
            self._board.forget(job_id)
            raise
        log.info(
            "job accepted",
            extra={"job_id": job_id, "request_id": job.request_id, "operation": operation},
        )
        resp.status = falcon.HTTP_202
        resp.location = f"/io/contacts/jobs/{job_id}"
        resp.media = {"data": {"job_id": job_id, "status": "queued", "operation": operation}}

    @staticmethod
    def _operation(req: falcon.Request) -> Operation:
        flag = req.get_param("upsert")
        if flag is None:
            return "create"
        operation = _UPSERT_FLAGS.get(flag.strip().lower())
        if operation is None:
            message = "upsert must be 1 or 0"
            raise InvalidRequest(message, [FieldError("upsert", message)])
        return operation


class JobResource:
    """GET /io/contacts/jobs/{job_id}: a job's status, to its owner only."""

    def __init__(self, board: JobBoard, final_job: FinalJobReader) -> None:
        self._board = board
        self._final_job = final_job

    def on_get(self, req: falcon.Request, resp: falcon.Response, job_id: str) -> None:
        document = job_status(self._board, self._final_job, job_id, req.context.user_id)
        if document is None:
            # Another user's job is indistinguishable from one that does not exist.
            raise falcon.HTTPNotFound(description="Job not found")
        resp.media = {"data": document}


class HealthResource:
    """GET /healthz: the process is alive. Touches nothing."""

    public = True

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class OpenApiResource:
    """GET /openapi.json: the OpenAPI 3.1 description of this API."""

    public = True

    def __init__(self, document: dict[str, Any]) -> None:
        self._body = orjson.dumps(document)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data = self._body
        resp.content_type = falcon.MEDIA_JSON


class ReadyResource:
    """GET /readyz: Redis and PostgreSQL answer; 503 naming the ones that do not."""

    public = True

    def __init__(self, checks: Mapping[str, Callable[[], Any]]) -> None:
        self._checks = checks

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        results: dict[str, str] = {}
        for name, check in self._checks.items():
            try:
                check()
                results[name] = "ok"
            except Exception as exc:
                log.warning("readiness check %s failed: %s", name, type(exc).__name__)
                results[name] = "unavailable"
        ready = all(v == "ok" for v in results.values())
        resp.status = falcon.HTTP_200 if ready else falcon.HTTP_503
        resp.media = {"status": "ready" if ready else "unavailable", "checks": results}
