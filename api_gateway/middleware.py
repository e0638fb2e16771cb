"""Cross-cutting concerns: request ids, bearer-key authentication, metrics."""

from __future__ import annotations

import re
import secrets
import time
from typing import Any, Protocol

import falcon

from api_gateway.throttle import FailureThrottle, TooManyFailures
from contacts_ingest.access.keys import KeyHolder
from contacts_ingest.infrastructure.metrics import REQUEST_SECONDS, REQUESTS

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")


class RequestIdMiddleware:
    """Carries the caller's X-Request-ID (or a fresh one) into the context and the answer."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        given = req.get_header(REQUEST_ID_HEADER)
        req.context.request_id = (
            given if given and _SAFE_REQUEST_ID.match(given) else "req_" + secrets.token_hex(8)
        )
        resp.set_header(REQUEST_ID_HEADER, req.context.request_id)


class ApiKeys(Protocol):
    def holder_for(self, key: str) -> KeyHolder | None:
        """What a live key stands for (its user, mode, callback); None for a missing,
        unknown or revoked one."""

    def seen_live(self, key: str) -> bool:
        """Whether this process last saw ``key`` live, without asking PostgreSQL."""


class AuthMiddleware:
    """Requires ``Authorization: Bearer <key>`` on every resource not marked public.

    It runs before any responder, so a request without a valid key is refused before
    its body is read. Failed attempts are throttled per client address
    (``api_gateway.throttle``).
    """

    def __init__(self, keys: ApiKeys, throttle: FailureThrottle) -> None:
        self._keys = keys
        self._throttle = throttle

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, params: dict[str, Any]
    ) -> None:
        if resource is None or getattr(resource, "public", False):
            return
        scheme, _, key = (req.get_header("Authorization") or "").partition(" ")
        key = key.strip() if scheme.lower() == "bearer" else ""
        retry_after = self._throttle.retry_after(req.remote_addr)
        if retry_after is not None and not self._keys.seen_live(key):
            raise TooManyFailures(retry_after)
        holder = self._keys.holder_for(key) if key else None
        if holder is None:
            self._throttle.failed(req.remote_addr)
            raise falcon.HTTPUnauthorized(
                description="A valid API key is required",
                challenges=['Bearer realm="contacts-ingest"'],
            )
        req.context.user_id = holder.user_id
        req.context.key_holder = holder


# Metric labels come from fixed sets: a client that sends its own method never adds a series.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    """The request's method as a metric label: one of the HTTP methods, or ``other``."""
    return method if method in _METHODS else "other"


class MetricsMiddleware:
    """Counts every answer by method, route (its URI template) and code, and times it.

    Every label comes from a fixed set, whatever the client sends.
    """

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool
    ) -> None:
        method = method_label(req.method)
        route = req.uri_template or "unmatched"
        code = falcon.http_status_to_code(resp.status)
        REQUESTS.labels(method, route, str(code)).inc()
        started = getattr(req.context, "started", None)
        if started is not None:
            REQUEST_SECONDS.labels(method, route).observe(time.perf_counter() - started)
