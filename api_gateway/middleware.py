"""Cross-cutting concerns: request ids and bearer-key authentication."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from typing import Any

import falcon

from contacts_ingest.metrics import REQUEST_SECONDS, REQUESTS

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


class AuthMiddleware:
    """Requires ``Authorization: Bearer <key>`` on every resource not marked public."""

    def __init__(self, user_for_key: Callable[[str], str | None]) -> None:
        self._user_for_key = user_for_key

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, params: dict[str, Any]
    ) -> None:
        if resource is None or getattr(resource, "public", False):
            return
        scheme, _, key = (req.get_header("Authorization") or "").partition(" ")
        user_id = self._user_for_key(key.strip()) if scheme.lower() == "bearer" else None
        if user_id is None:
            raise falcon.HTTPUnauthorized(
                description="A valid API key is required",
                challenges=['Bearer realm="contacts-ingest"'],
            )
        req.context.user_id = user_id


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
