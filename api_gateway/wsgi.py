"""The production WSGI application, built from the environment.

Served by ``contacts-ingest serve`` (granian); any WSGI server can load ``api_gateway.wsgi:app``.
"""

from __future__ import annotations

import socket
from functools import partial
from typing import TYPE_CHECKING

from api_gateway.app import GatewayDeps, create_app
from api_gateway.gate import ActiveRequests
from api_gateway.waiting import CompletionListener
from contacts_ingest.access.keys import KeyResolver
from contacts_ingest.access.webhooks import WebhookVerifier
from contacts_ingest.infrastructure.database import make_engine
from contacts_ingest.infrastructure.logs import configure_logging
from contacts_ingest.infrastructure.redis_clients import redis_client
from contacts_ingest.infrastructure.schema import require_current_schema
from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.jobs.board import JobBoard
from contacts_ingest.jobs.status import read_final_job, read_final_jobs

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication


# Idle 10 s, then a probe every 5 s; three unanswered: the connection is dead (~25 s).
# (Where the platform names these options: Linux does, macOS only some.)
KEEPALIVE = {
    option: value
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))
    if (option := getattr(socket, name, None)) is not None
}


def build_app(settings: Settings | None = None) -> WSGIApplication:
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_format)
    client = redis_client(
        settings, socket_timeout=2, socket_connect_timeout=2, health_check_interval=30
    )
    engine = make_engine(settings.database_url, read_only=True)
    board = JobBoard.for_settings(client, settings)

    def postgres_ready() -> None:
        with engine.connect() as conn:
            require_current_schema(conn)

    deps = GatewayDeps(
        keys=KeyResolver(engine, ttl=settings.key_cache_ttl_seconds),
        board=board,
        final_job=lambda job_id: read_final_job(engine, job_id),
        final_jobs=partial(read_final_jobs, engine),
        readiness={"redis": client.ping, "postgres": postgres_ready},
        shedding=board.shedding,
        webhooks=WebhookVerifier(engine, ttl=settings.key_cache_ttl_seconds),
        # Its own connection, without a read timeout: it mostly waits for messages. TCP
        # keepalive tells it when the machine at the other end is gone (no reset comes).
        completions=CompletionListener(
            redis_client(
                settings,
                socket_connect_timeout=2,
                health_check_interval=30,
                socket_keepalive=True,
                socket_keepalive_options=KEEPALIVE,
            ),
            board.completion_pattern(),
        ),
    )
    return ActiveRequests(create_app(settings, deps), active=settings.gateway_active_requests)


app = build_app()
