"""Where every Redis client of the service comes from: one Redis, or the master that
Sentinel names.

With ``REDIS_SENTINELS`` a client asks the sentinels for the current master of
``REDIS_SENTINEL_MASTER`` whenever it opens a connection; a connection to a master
that died fails (ConnectionError), and the next one finds the master Sentinel
promoted, without a restart. A connection to a former master that became a replica
fails the same way (redis-py turns its READONLY into a ConnectionError). The URL's
credentials, database and options still apply; its host and port do not. Sentinels
that ask for credentials of their own get ``REDIS_SENTINEL_USERNAME`` and
``REDIS_SENTINEL_PASSWORD``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import redis
from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.sentinel import Sentinel

from contacts_ingest.infrastructure.settings import Settings

# How long a client waits for a sentinel's answer (they answer from memory).
SENTINEL_TIMEOUT_SECONDS = 1.0


def redis_client(settings: Settings, url: str | None = None, **options: Any) -> redis.Redis:
    """A client of the Redis at ``url`` (default ``REDIS_URL``), or, with
    ``REDIS_SENTINELS``, of the master Sentinel names. ``options`` are redis-py's
    connection options (``socket_timeout`` ...)."""
    url = url or settings.redis_url
    if not settings.sentinel_addresses:
        return redis.Redis.from_url(url, **options)
    connection = {**parse_url(url), **options}  # type: ignore[no-untyped-call]
    pool = master_pool(
        settings.sentinel_addresses,
        settings.redis_sentinel_master,
        connection,
        sentinel_auth=settings.sentinel_auth,
    )
    return redis.Redis(connection_pool=pool)


def master_pool(
    sentinels: Sequence[tuple[str, int]],
    master: str,
    connection: dict[str, Any],
    *,
    sentinel_auth: Mapping[str, str] | None = None,
) -> redis.ConnectionPool:
    """A connection pool whose connections go to the current master named ``master`` by
    ``sentinels`` ((host, port) pairs), asked each time one connects.

    ``connection`` holds redis-py's connection options (credentials, ``db``, timeouts,
    a ``connection_class`` deriving from SentinelManagedConnection); a host, a port or
    a Unix socket path in it is ignored. ``sentinel_auth`` (``username``,
    ``password``) logs in to the sentinels themselves.
    """
    options = {k: v for k, v in connection.items() if k not in ("host", "port", "path")}
    kind = options.get("connection_class")
    if kind is UnixDomainSocketConnection:
        del options["connection_class"]
    elif kind is SSLConnection:
        del options["connection_class"]
        options["ssl"] = True  # the pool then picks its TLS connection of the master
    timeout = options.get("socket_connect_timeout") or SENTINEL_TIMEOUT_SECONDS
    manager = Sentinel(  # type: ignore[no-untyped-call]
        list(sentinels),
        sentinel_kwargs={
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            **(sentinel_auth or {}),
        },
    )
    client: redis.Redis = manager.master_for(master, **options)  # type: ignore[no-untyped-call]
    return client.connection_pool
