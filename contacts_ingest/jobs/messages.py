"""Celery task messages for contact jobs, built without Celery.

The gateway queues a job's message inside its one admission step in Redis, so it
builds the message itself and never imports Celery (which also keeps its processes
small).
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson

from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.jobs.board import TASK_NAME, ContactJob

ACCEPTED_AT_PLACEHOLDER = "__ACCEPTED_AT_US__"


class CeleryMessages:
    """Celery task messages (protocol 2, JSON) for contact jobs, built by hand.

    The gateway pushes them onto the queue inside its one admission step in Redis
    (``JobBoard.admit(enqueue=...)``): one round trip per request instead of two,
    and a job is never recorded as queued without its message. The message is what
    ``CeleryPublisher`` sends through kombu (an integration test compares the two),
    except that the body is not base64-encoded and the job's acceptance time is left
    as a placeholder that the admission script fills in from Redis's clock.
    """

    def __init__(self, settings: Settings) -> None:
        self._queue = settings.celery_queue
        self.queue_key = f"{settings.redis_key_prefix}{settings.celery_queue}"
        self._origin = f"{os.getpid()}@{socket.gethostname()}"

    def __call__(self, job: ContactJob) -> tuple[str, bytes]:
        """(queue key, message) for ``job``; its ``accepted_at_us`` is ignored."""
        rest = {k: v for k, v in job.to_message().items() if k != "accepted_at_us"}
        # The placeholder comes before anything a client wrote, so the script's first
        # match is always it.
        job_json = (
            b'{"accepted_at_us":' + ACCEPTED_AT_PLACEHOLDER.encode() + b"," + json_bytes(rest)[1:]
        )
        body = (
            b'[[],{"job":'
            + job_json
            + b'},{"callbacks":null,"errbacks":null,"chain":null,"chord":null}]'
        )
        message = {
            "body": body.decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py", "task": TASK_NAME, "id": job.job_id, "shadow": None,
                "eta": None, "expires": None, "group": None, "group_index": None,
                "retries": 0, "timelimit": [None, None], "root_id": job.job_id,
                "parent_id": None, "argsrepr": "()",
                "kwargsrepr": f"{{job_id: {job.job_id}}}", "origin": self._origin,
                "ignore_result": None, "replaced_task_nesting": 0,
                "stamped_headers": None, "stamps": {}, "request_id": job.request_id,
            },
            "properties": {
                "correlation_id": job.job_id, "reply_to": str(uuid.uuid4()),
                "argsrepr": "()", "kwargsrepr": f"{{job_id: {job.job_id}}}",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": self._queue},
                "priority": 0, "delivery_tag": str(uuid.uuid4()),
            },
        }  # fmt: skip
        return self.queue_key, json_bytes(message)


def json_bytes(value: Any) -> bytes:
    """Compact JSON: orjson, or the standard library for integers beyond 64 bits
    (PostgreSQL's JSONB keeps them, and clients may send them; orjson refuses them).
    Either way datetimes are RFC 3339 and UUIDs their canonical text."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(
            value, separators=(",", ":"), ensure_ascii=False, default=_as_json_text
        ).encode()


def _as_json_text(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
