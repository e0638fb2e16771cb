"""The gateway's floor: a WSGI app that only pushes the request body onto a Redis list.

Served by the same server (granian) and hit by the same load as the real gateway, so
the ratio between the two says what the real work (auth, rate limit, validation,
enqueue) costs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import redis

_client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
_key = os.environ.get("FLOOR_LIST", "contacts-bench-floor")
_answer = [b'{"data":{"status":"queued"}}']


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    _client.lpush(_key, environ["wsgi.input"].read(length))
    start_response("202 Accepted", [("Content-Type", "application/json")])
    return _answer
