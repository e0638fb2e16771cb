"""Bring a database to the newest schema with Alembic, creating the database if needed."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import OperationalError

from contacts_ingest.infrastructure.schema import SCHEMA_HEAD, require_current_schema
from contacts_ingest.infrastructure.settings import sqlalchemy_url

__all__ = ["SCHEMA_HEAD", "head_revision", "require_current_schema", "upgrade"]

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Alembic's ini interpolation treats % specially.
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(database_url).replace("%", "%%"))
    return config


def ensure_database(database_url: str) -> bool:
    """Create the database named in ``database_url`` if it does not exist; True if created."""
    url = make_url(sqlalchemy_url(database_url))
    try:
        create_engine(url).connect().close()
        return False
    except OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        name = (url.database or "").replace('"', '""')
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return True


def upgrade(database_url: str) -> None:
    """Create the database if missing, then apply every pending migration."""
    ensure_database(database_url)
    command.upgrade(alembic_config(database_url), "head")


def head_revision() -> str:
    """The newest migration this code knows."""
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert head is not None
    return head
