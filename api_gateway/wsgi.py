"""The production WSGI application, built from the environment.

Served by ``contacts-ingest serve`` (granian); any WSGI server can load ``api_gateway.wsgi:app``.
"""

from __future__ import annotations

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
        # Its own connection, without a read timeout: it mostly waits for messages.
        completions=CompletionListener(
            redis_client(settings, socket_connect_timeout=2, health_check_interval=30),
            board.completion_pattern(),
        ),
    )
    return ActiveRequests(create_app(settings, deps), active=settings.gateway_active_requests)


app = build_app()
