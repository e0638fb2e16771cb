"""Celery task messages for contact jobs, built without Celery.

Admission queues a job's message inside its one atomic Redis step, so every producer
builds the message itself and none imports Celery (which also keeps the gateway's
processes small).
"""

from __future__ import annotations

import json
import os
import random
import socket
import uuid
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson

from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.jobs.job import TASK_NAME, ContactJob

# Where the acceptance time goes; split out before the message leaves this module.
_ACCEPTED_AT = b"__ACCEPTED_AT_US__"


class CeleryMessages:
    """Celery task messages (protocol 2, JSON) for contact jobs, built by hand.

    ``JobBoard.admit`` pushes them onto the queue inside its one admission step in
    Redis: one round trip per request, and a job is never recorded as queued without
    its message. The message is what Celery's ``send_task`` would send through kombu
    (an integration test compares the two), except that the body is not
    base64-encoded and the job's acceptance time is left out: the message comes in
    two parts, and the admission script puts Redis's clock between them.
    """

    def __init__(self, settings: Settings) -> None:
        self._queue = settings.celery_queue
        self.queue_key = f"{settings.redis_key_prefix}{settings.celery_queue}"
        self._origin = f"{os.getpid()}@{socket.gethostname()}"
        # Where a result would be sent back: Celery too names one per producer (its
        # app's oid), not per message; no one replies to these jobs.
        self._reply_to = str(uuid.uuid4())

    def __call__(self, job: ContactJob) -> tuple[str, bytes, bytes]:
        """(queue key, message before the acceptance time, message after it) for
        ``job``; its ``accepted_at_us`` is ignored."""
        rest = {k: v for k, v in job.to_message().items() if k != "accepted_at_us"}
        # The acceptance time comes before anything a client wrote, so the first
        # occurrence of its marker is always the marker itself.
        job_json = b'{"accepted_at_us":' + _ACCEPTED_AT + b"," + json_bytes(rest)[1:]
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
                "correlation_id": job.job_id, "reply_to": self._reply_to,
                "argsrepr": "()", "kwargsrepr": f"{{job_id: {job.job_id}}}",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": self._queue},
                "priority": 0, "delivery_tag": _delivery_tag(),
            },
        }  # fmt: skip
        head, tail = json_bytes(message).split(_ACCEPTED_AT, 1)
        return self.queue_key, head, tail


def _delivery_tag() -> str:
    """A tag unique among the queue's unacknowledged messages (opaque to kombu): 128
    bits from the process's own generator, which every forked process reseeds."""
    return f"{random.getrandbits(128):032x}"


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
