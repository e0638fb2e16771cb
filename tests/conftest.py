"""Shared fixtures. Servers are only touched by tests that ask for them.

Each run gets its own PostgreSQL database (created, migrated, dropped) and its own
Redis key prefix and Celery queue, so runs never see each other's data.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import Engine, create_engine, make_url, text

from contacts_ingest.infrastructure.database import make_engine
from contacts_ingest.infrastructure.migrate import upgrade
from contacts_ingest.infrastructure.settings import Settings, sqlalchemy_url

RUN_ID = secrets.token_hex(4)
ADMIN_DATABASE_URL = os.environ.get(
    "TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


# A contact as the API returns it: the reference's fields in its order, then ours.
CONTACT_FIELDS = [
    *("id", "email", "first_name", "last_name", "phone", "company", "job_title"),
    *("social_profiles", "status", "lead_score", "created_at"),
    *("custom_fields", "source", "workspace_id", "updated_at"),
]


# The request body's fields, in the API reference's order.
REQUEST_FIELDS = [
    *("email", "firstName", "lastName", "phone", "company", "jobTitle"),
    *("socialProfiles", "status", "customFields", "source", "workspaceId"),
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique(prefix: str) -> str:
    """A fresh id for one test's own data."""
    return f"{prefix}-{secrets.token_hex(6)}"


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A migrated database of this run's own, dropped at the end."""
    admin_url = make_url(sqlalchemy_url(ADMIN_DATABASE_URL))
    name = f"contacts_test_{RUN_ID}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_prefix() -> Iterator[str]:
    prefix = f"contacts-test-{RUN_ID}:"
    yield prefix
    client = redis.Redis.from_url(TEST_REDIS_URL)
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        client.delete(key)


@pytest.fixture(scope="session")
def settings(database_url: str, redis_prefix: str) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=TEST_REDIS_URL,
        redis_key_prefix=redis_prefix,
        celery_queue=f"contacts-test-{RUN_ID}",
    )


@pytest.fixture(scope="session")
def engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings.database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def redis_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url)
