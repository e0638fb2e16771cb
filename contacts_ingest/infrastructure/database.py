"""Engines for PostgreSQL: read-write for workers and the CLI, read-only for the gateway."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine, make_url

from contacts_ingest.infrastructure.settings import sqlalchemy_url


def make_engine(
    database_url: str, *, read_only: bool = False, pool_size: int = 5, pre_ping: bool = True
) -> Engine:
    """Return a pooled engine for ``database_url``.

    ``read_only`` engines open every transaction read-only, so the gateway cannot
    write PostgreSQL even by mistake: the server itself refuses. ``database_url`` may
    name several hosts (libpq's multi-host form, ``target_session_attrs=read-write``):
    each new connection then goes to whichever is the primary. ``pre_ping`` checks a
    pooled connection before each use (a round trip); callers that retry on
    OperationalError anyway can do without.
    """
    url = make_url(sqlalchemy_url(database_url))
    connect_args: dict[str, object] = {"connect_timeout": 5}
    if read_only:
        connect_args["options"] = "-c default_transaction_read_only=on"
        if url.query.get("target_session_attrs") == "read-write":
            # libpq would find such a session read-only, wherever it connects; the
            # primary is what read-write means here (so status reads see every commit).
            connect_args["target_session_attrs"] = "primary"
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=pre_ping,
        pool_recycle=1800,
        connect_args=connect_args,
        # Statement parameters are contact data: never in an exception's text, so never
        # in a log.
        hide_parameters=True,
    )
