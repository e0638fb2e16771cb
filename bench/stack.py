"""The stack under test: a database, key prefix and queues of the run's own, the
``serve`` and ``worker`` processes on them, and the peak RSS of each.

Every measurement takes a ``Stack``, a ``Profile`` (how much and how long) and the
``RssSampler``; ``Stack.close`` stops what it started and removes what it made.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg
import redis

from contacts_ingest.infrastructure.local_servers import free_port
from contacts_ingest.infrastructure.scratch import (
    CLI,
    Process,
    run_id,
    scratch_database,
    scratch_prefix,
    start_process,
    wait_ready,
)
from contacts_ingest.infrastructure.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CELERY = str(Path(sys.executable).parent / "celery")
GRANIAN = str(Path(sys.executable).parent / "granian")


@dataclass(frozen=True)
class Profile:
    load_seconds: int
    rates: tuple[int, ...]
    single_jobs: int
    batches: int
    naive_jobs: int
    floor_rows: int
    e2e_rate: int
    e2e_seconds: int
    drain_timeout: int


FULL = Profile(15, (250, 500, 1000, 2000, 4000), 10_000, 20, 5_000, 100_000, 1000, 60, 120)
QUICK = Profile(5, (250, 1000), 2_000, 4, 1_000, 20_000, 200, 10, 60)


class Stack:
    """A database, key prefix and queues of this run's own, and the processes on them."""

    def __init__(self) -> None:
        base = Settings()
        self.run = run_id()
        self._scratch = ExitStack()
        try:
            url = self._scratch.enter_context(
                scratch_database(
                    base.database_url, f"contacts_bench_{self.run}", admin_database="postgres"
                )
            )
            self.prefix = self._scratch.enter_context(
                scratch_prefix(base.redis_url, f"contacts-bench-{self.run}:", f"naive-{self.run}")
            )
        except BaseException:
            self._scratch.close()
            raise
        self.database_url = url.replace("postgresql+psycopg://", "postgresql://", 1)
        self.queue = f"bench-{self.run}"
        self.redis_url = base.redis_url
        self.redis = redis.Redis.from_url(base.redis_url)
        self.env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_KEY_PREFIX": self.prefix,
            "CELERY_QUEUE": self.queue,
            "RATE_LIMIT_WRITES": "1000000000",
            "LOG_LEVEL": "WARNING",
            "WORKER_METRICS_PORT": "0",
            "NAIVE_QUEUE": f"naive-{self.run}",
            "FLOOR_LIST": f"{self.prefix}floor",
        }
        self.processes: list[Process] = []
        self.pg = psycopg.connect(self.database_url, autocommit=True)

    def settings(self) -> Settings:
        """Settings naming this stack's database, key prefix and queue (for producers)."""
        return Settings(
            database_url=self.database_url, redis_key_prefix=self.prefix, celery_queue=self.queue
        )

    def start(self, args: list[str], **env: str) -> Process:
        process = start_process(args, {**self.env, **env}, cwd=ROOT)
        self.processes.append(process)
        return process

    def stop(self, process: Process) -> None:
        process.stop(timeout=60)

    def worker(self, sampler: RssSampler | None = None) -> Process:
        """``contacts-ingest worker --concurrency 2`` on this stack, its RSS watched."""
        process = self.start([CLI, "worker", "--concurrency", "2"])
        if sampler is not None:
            sampler.watch("worker", process.pid)
        return process

    def key(self, user: str) -> str:
        return subprocess.run(
            [CLI, "keys", "create", "--user", user], env=self.env, capture_output=True,
            text=True, check=True,
        ).stdout.strip()  # fmt: skip

    def scalar(self, sql: str, *params: Any) -> Any:
        return self.pg.execute(sql, params).fetchone()[0]  # type: ignore[index]

    def close(self) -> None:
        for process in self.processes:
            self.stop(process)
        self.pg.close()
        self._scratch.close()


@dataclass(frozen=True)
class Served:
    """A server under test: its base URL, and the pid of its process tree's root."""

    url: str
    pid: int


@contextmanager
def gateway(stack: Stack, sampler: RssSampler) -> Iterator[Served]:
    """``contacts-ingest serve --workers 2`` on the stack, until the block ends."""
    port = free_port()
    process = stack.start([CLI, "serve", "--port", str(port), "--workers", "2"])
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/healthz", process, ok_only=False)
    sampler.watch("gateway", process.pid)
    try:
        yield Served(url, process.pid)
    finally:
        stack.stop(process)


class RssSampler:
    """Peak RSS per process of some process trees, sampled every 0.5 s."""

    def __init__(self) -> None:
        self.peaks: dict[str, float] = {}
        self._trees: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def watch(self, name: str, pid: int) -> None:
        self._trees[name] = pid

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            for name, pid in list(self._trees.items()):
                try:
                    root = psutil.Process(pid)
                    members = [root, *root.children(recursive=True)]
                    peak = max(m.memory_info().rss for m in members) / 2**20
                except psutil.Error:
                    continue
                self.peaks[name] = max(self.peaks.get(name, 0.0), round(peak, 1))

    def close(self) -> None:
        self._stop.set()
