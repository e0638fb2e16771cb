"""Real processes: ``contacts-ingest serve`` and ``contacts-ingest worker``, driven over HTTP."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from contacts_ingest.infrastructure import scratch
from contacts_ingest.infrastructure.scratch import CLI as CLI
from contacts_ingest.infrastructure.scratch import Process as Process
from contacts_ingest.infrastructure.settings import Settings
from tests.conftest import unique

FINAL = ("succeeded", "failed")


def service_env(settings: Settings, **overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        REDIS_KEY_PREFIX=settings.redis_key_prefix,
        CELERY_QUEUE=settings.celery_queue,
        KEY_CACHE_TTL_SECONDS="0.5",
        WORKER_METRICS_PORT="0",  # many workers run at once in the tests
        # Every test talks from 127.0.0.1, many of them with bad keys on purpose; the
        # throttle itself is tested with its own limit (test_failed_authentications.py).
        AUTH_FAILURE_LIMIT="100000",
        LOG_LEVEL="INFO",
    )
    env.update(overrides)
    return env


def start_gateway(env: dict[str, str], log_dir: Path, workers: int = 1) -> tuple[Process, str]:
    """A gateway once /readyz answers 200; its output in ``log_dir``."""
    return scratch.start_gateway(env, workers=workers, log_dir=log_dir)


def start_worker(
    env: dict[str, str], log_dir: Path, name: str = "worker", concurrency: int = 2
) -> Process:
    return scratch.start_worker(env, concurrency=concurrency, log=log_dir / f"{name}.log")


def create_key(env: dict[str, str], user: str) -> str:
    done = subprocess.run(
        [CLI, "keys", "create", "--user", user], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@dataclass
class Service:
    base: str
    env: dict[str, str]

    def new_user(self) -> tuple[str, dict[str, str]]:
        user = unique("user")
        return user, {"Authorization": f"Bearer {create_key(self.env, user)}"}

    def post(
        self, headers: dict[str, str], body: Any, *, upsert: bool = False
    ) -> requests.Response:
        return requests.post(
            f"{self.base}/io/contacts/contacts",
            json=body,
            headers=headers,
            params={"upsert": "1"} if upsert else None,
            timeout=10,
        )

    def job(self, headers: dict[str, str], job_id: str) -> requests.Response:
        return requests.get(f"{self.base}/io/contacts/jobs/{job_id}", headers=headers, timeout=10)

    def wait_final(self, headers: dict[str, str], job_id: str, timeout: float = 30) -> Any:
        return wait_final(self.base, headers, job_id, timeout)


def wait_final(base: str, headers: dict[str, str], job_id: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        answer = requests.get(f"{base}/io/contacts/jobs/{job_id}", headers=headers, timeout=10)
        assert answer.status_code == 200, answer.text
        data = answer.json()["data"]
        if data["status"] in FINAL:
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {data['status']} after {timeout}s")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service-logs")


@pytest.fixture(scope="session")
def service(settings: Settings, log_dir: Path) -> Iterator[Service]:
    """A gateway and a worker on this run's database, Redis prefix and queue."""
    env = service_env(settings)
    worker = start_worker(env, log_dir)
    gateway, base = start_gateway(env, log_dir)
    yield Service(base, env)
    gateway.stop()
    worker.stop()
