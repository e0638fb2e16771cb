"""DATABASE_URL as operators write it, libpq's multi-host form included."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event

from contacts_ingest.infrastructure.database import make_engine
from contacts_ingest.infrastructure.settings import sqlalchemy_url

MULTI = "postgresql://app:p%40ss@db-a:5432,db-b:5433/contacts?target_session_attrs=read-write"


class Captured(Exception):
    """Raised in place of connecting, with what psycopg would have been handed."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params


def libpq_params(url: str, *, read_only: bool = False) -> dict[str, Any]:
    """What the engine hands psycopg to connect (no connection is made)."""
    engine = make_engine(url, read_only=read_only, pre_ping=False)

    @event.listens_for(engine, "do_connect")
    def capture(dialect: Any, record: Any, args: Any, params: dict[str, Any]) -> None:
        raise Captured(params)

    with pytest.raises(Captured) as captured:
        engine.connect()
    return captured.value.params


def test_a_single_host_url_only_gains_its_driver() -> None:
    assert sqlalchemy_url("postgresql://u@h:5432/db") == "postgresql+psycopg://u@h:5432/db"
    assert sqlalchemy_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    params = libpq_params("postgresql://u@h:5432/db")
    assert (params["host"], params["port"]) == ("h", 5432)


def test_every_host_of_a_multi_host_url_reaches_libpq_in_order() -> None:
    params = libpq_params(MULTI)
    assert (params["host"], params["port"]) == ("db-a,db-b", "5432,5433")
    assert (params["user"], params["password"], params["dbname"]) == ("app", "p@ss", "contacts")
    assert params["target_session_attrs"] == "read-write"


def test_a_read_only_engine_on_several_hosts_goes_to_the_primary() -> None:
    # Its sessions are read-only by design, so libpq's read-write test would refuse every
    # host; "primary" (not in recovery) is the same server.
    params = libpq_params(MULTI, read_only=True)
    assert params["target_session_attrs"] == "primary"
    assert params["options"] == "-c default_transaction_read_only=on"
    assert params["host"] == "db-a,db-b"
