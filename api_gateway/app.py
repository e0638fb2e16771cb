"""The gateway's app factory: every collaborator comes in as an argument."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import falcon
import orjson
import redis
from falcon.media import JSONHandler
from sqlalchemy.exc import SQLAlchemyError

from api_gateway.middleware import (
    ApiKeys,
    AuthMiddleware,
    MetricsMiddleware,
    RequestIdMiddleware,
)
from api_gateway.openapi import openapi_document
from api_gateway.resources import (
    UNAVAILABLE_MESSAGE,
    ContactIntake,
    ContactsResource,
    DeliveryVerifier,
    HealthResource,
    JobsResource,
    MetricsResource,
    OpenApiResource,
    ReadyResource,
    WebhookResource,
)
from api_gateway.throttle import FailureThrottle
from api_gateway.waiting import CompletionListener, JobWaiter, WaitSlots
from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.jobs.board import AdmissionRefusal, JobBoard, NotReplicated
from contacts_ingest.jobs.messages import json_bytes
from contacts_ingest.jobs.status import FinalJobLister, FinalJobReader
from contacts_ingest.model.documents import Error

log = logging.getLogger(__name__)

# The 503 of an admission that REDIS_MIN_REPLICAS_ACK replicas did not confirm in time.
NOT_REPLICATED_MESSAGE = (
    "Not confirmed by Redis replicas in time; the job may be queued: retry with the same"
    " Idempotency-Key"
)
# Retry-After of that 503: a replica is back or promoted within seconds, or not soon.
NOT_REPLICATED_RETRY_AFTER_SECONDS = 2


@dataclass(frozen=True)
class GatewayDeps:
    """What the gateway talks to. Tests pass fakes; ``api_gateway.wsgi`` the real ones."""

    # Presented API key -> user id, or None for a missing, unknown or revoked key.
    keys: ApiKeys
    board: JobBoard
    # Job id -> its final status row from PostgreSQL, or None.
    final_job: FinalJobReader
    # A user's final status rows, a page at a time (contacts_ingest.jobs.status).
    final_jobs: FinalJobLister
    # Name -> a check that raises if that dependency is unreachable.
    readiness: Mapping[str, Callable[[], Any]]
    # Webhook deliveries -> their endpoint (user and operation), or WebhookRejected.
    webhooks: DeliveryVerifier
    # Wakes requests that asked to wait (Prefer: wait=N); None answers them 202 at once.
    completions: CompletionListener | None = None
    # Why new jobs are refused right now (queue full, Redis out of memory, too few
    # replicas), or None.
    shedding: Callable[[], AdmissionRefusal | None] = lambda: None


def _serialize_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    title = exc.title
    if title[:3].isdigit():  # Falcon's own titles start with the code: "405 Method Not Allowed"
        title = title[4:]
    body: Error = {"error": exc.description or title}
    problem_type = getattr(exc, "problem_type", None)
    if problem_type:
        body["type"] = problem_type
    errors = getattr(exc, "errors", None)
    if errors:
        body["errors"] = errors
    resp.data = orjson.dumps(body)
    resp.content_type = falcon.MEDIA_JSON


def _unavailable(
    req: falcon.Request, resp: falcon.Response, exc: Exception, params: dict[str, Any]
) -> None:
    log.error("dependency unavailable: %s", type(exc).__name__, extra={"path": req.path})
    raise falcon.HTTPServiceUnavailable(description=UNAVAILABLE_MESSAGE, retry_after=1) from exc


def _not_replicated(
    req: falcon.Request, resp: falcon.Response, exc: Exception, params: dict[str, Any]
) -> None:
    log.warning(
        "admission not confirmed by replicas: %s",
        exc,
        extra={"path": req.path, "job_id": getattr(exc, "job_id", None)},
    )
    raise falcon.HTTPServiceUnavailable(
        description=NOT_REPLICATED_MESSAGE, retry_after=NOT_REPLICATED_RETRY_AFTER_SECONDS
    ) from exc


def _internal_error(
    req: falcon.Request, resp: falcon.Response, exc: Exception, params: dict[str, Any]
) -> None:
    # Instead of Falcon's own handler, which prints the traceback, text and all, to the
    # server's error stream: through logging, an exception is logged without its text.
    log.error("unexpected error", exc_info=exc, extra={"path": req.path})
    raise falcon.HTTPInternalServerError(description="Internal server error") from exc


def _not_found(req: falcon.Request, resp: falcon.Response, **params: Any) -> None:
    raise falcon.HTTPNotFound(description="Not found")


def create_app(
    settings: Settings, deps: GatewayDeps
) -> falcon.App[falcon.Request, falcon.Response]:
    """Build the WSGI application."""
    throttle = FailureThrottle(settings.auth_failure_limit, settings.auth_failure_window_seconds)
    middleware: list[Any] = [
        MetricsMiddleware(),
        RequestIdMiddleware(),
        AuthMiddleware(deps.keys, throttle),
    ]
    app = falcon.App(
        middleware=middleware,
        cors_enable=False,
    )
    json_handler = JSONHandler(dumps=json_bytes, loads=orjson.loads)
    app.req_options.media_handlers[falcon.MEDIA_JSON] = json_handler
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = json_handler
    app.req_options.strip_url_path_trailing_slash = True
    app.set_error_serializer(_serialize_error)
    app.add_error_handler(Exception, _internal_error)
    app.add_error_handler(redis.RedisError, _unavailable)
    app.add_error_handler(SQLAlchemyError, _unavailable)
    app.add_error_handler(NotReplicated, _not_replicated)

    slots = WaitSlots(
        per_user=settings.wait_max_per_user, per_process=settings.wait_max_per_process
    )
    waiter = JobWaiter(deps.board, deps.final_job, deps.completions, slots)
    intake = ContactIntake(settings, deps.board, waiter)
    respond = settings.respond_default_wait
    app.add_route("/io/contacts/contacts", ContactsResource(intake, respond_default=respond))
    app.add_route("/io/contacts/contacts/batch", ContactsResource(intake, batch=True))
    app.add_route(
        "/io/contacts/webhooks/{endpoint_id}", WebhookResource(intake, deps.webhooks, throttle)
    )
    jobs = JobsResource(deps.board, deps.final_job, deps.final_jobs, waiter)
    app.add_route("/io/contacts/jobs", jobs)
    app.add_route("/io/contacts/jobs/{job_id}", jobs, suffix="item")
    app.add_route("/healthz", HealthResource())
    app.add_route("/readyz", ReadyResource(deps.readiness, deps.shedding))
    app.add_route("/openapi.json", OpenApiResource(openapi_document(settings)))
    app.add_route("/metrics", MetricsResource())
    app.add_sink(_not_found, "/")
    return app
