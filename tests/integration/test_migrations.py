"""The Alembic history applies cleanly from nothing and rolls back to nothing."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, make_url, text
from sqlalchemy.exc import IntegrityError

from contacts_ingest.infrastructure.migrate import (
    alembic_config,
    ensure_database,
    head_revision,
    require_current_schema,
    upgrade,
)
from contacts_ingest.infrastructure.scratch import database_url, drop_database
from tests.conftest import unique

pytestmark = pytest.mark.integration


def test_migrate_creates_the_database_and_the_schema_and_downgrades(
    admin_database_url: str,
) -> None:
    name = unique("contacts_migrate").replace("-", "_")
    url_text = database_url(admin_database_url, name)
    url = make_url(url_text)
    try:
        upgrade(url_text)
        assert not ensure_database(url_text)
        engine = create_engine(url)
        assert {"contacts", "contact_jobs", "api_keys"} <= set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            require_current_schema(conn, head_revision())
        command.downgrade(alembic_config(url_text), "base")
        assert "contacts" not in inspect(engine).get_table_names()
        with engine.connect() as conn, pytest.raises(RuntimeError, match="run migrate"):
            require_current_schema(conn, head_revision())
        upgrade(url_text)
        assert "contacts" in inspect(engine).get_table_names()
        engine.dispose()
    finally:
        drop_database(admin_database_url, name)


def test_endpoints_created_before_operations_existed_keep_creating(
    admin_database_url: str,
) -> None:
    name = unique("contacts_migrate").replace("-", "_")
    url_text = database_url(admin_database_url, name)
    url = make_url(url_text)
    try:
        ensure_database(url_text)
        command.upgrade(alembic_config(url_text), "0003")
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO webhook_endpoints (endpoint_id, user_id) VALUES ('whk_old', 'u')")
            )
        upgrade(url_text)
        with engine.begin() as conn:
            operation = conn.execute(
                text("SELECT operation FROM webhook_endpoints WHERE endpoint_id = 'whk_old'")
            ).scalar()
            assert operation == "create"
            with pytest.raises(IntegrityError):
                conn.execute(text("UPDATE webhook_endpoints SET operation = 'delete'"))
        engine.dispose()
    finally:
        drop_database(admin_database_url, name)
