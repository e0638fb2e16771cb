"""Scratch state and processes for the tests, the benchmark and the soak run.

Each of them works in a PostgreSQL database and under a Redis key prefix of its own,
removed at the end, so runs never see each other's data; and each drives the real
``serve`` and ``worker`` processes, started and stopped the same way. Written once
here, so a run's database is always created the same way and always dropped.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
from sqlalchemy import URL, create_engine, make_url, text

from contacts_ingest.infrastructure.local_servers import free_port
from contacts_ingest.infrastructure.migrate import upgrade
from contacts_ingest.infrastructure.settings import sqlalchemy_url

# The command line of this installation, beside the interpreter running the caller.
CLI = str(Path(sys.executable).parent / "contacts-ingest")


def run_id() -> str:
    """A short random id naming one run's database, key prefix and queues."""
    return secrets.token_hex(4)


def _server(server_url: str, admin_database: str | None) -> URL:
    url = make_url(sqlalchemy_url(server_url))
    return url.set(database=admin_database) if admin_database else url


def database_url(server_url: str, name: str) -> str:
    """The URL of database ``name`` on the server of ``server_url`` (same role)."""
    return _server(server_url, None).set(database=name).render_as_string(hide_password=False)


def _execute(server_url: str, admin_database: str | None, statement: str) -> None:
    admin = create_engine(_server(server_url, admin_database), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(statement))
    finally:
        admin.dispose()


def drop_database(server_url: str, name: str, *, admin_database: str | None = None) -> None:
    """Drop database ``name`` if it exists, closing whatever sessions it still has."""
    _execute(server_url, admin_database, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def scratch_database(
    server_url: str, name: str, *, migrate: bool = True, admin_database: str | None = None
) -> Iterator[str]:
    """Create database ``name`` on the server of ``server_url`` (whose role may create
    databases), migrated to the newest schema unless ``migrate`` is False; yield its URL;
    drop it at the end, whatever happened. The server is reached through ``server_url``'s
    own database, or ``admin_database`` if given."""
    _execute(server_url, admin_database, f'CREATE DATABASE "{name}"')
    try:
        url = database_url(server_url, name)
        if migrate:
            upgrade(url)
        yield url
    finally:
        drop_database(server_url, name, admin_database=admin_database)


def delete_keys(redis_url: str, *prefixes: str) -> None:
    """Delete every key that starts with one of ``prefixes``."""
    client = redis.Redis.from_url(redis_url)
    try:
        for prefix in prefixes:
            for key in client.scan_iter(match=f"{prefix}*", count=1000):
                client.delete(key)
    finally:
        client.close()


@contextmanager
def scratch_prefix(redis_url: str, prefix: str, *others: str) -> Iterator[str]:
    """Yield ``prefix``; at the end, delete every key under it (and under ``others``)."""
    try:
        yield prefix
    finally:
        delete_keys(redis_url, prefix, *others)


class NotReady(RuntimeError):
    """A process that exited, or did not answer in time; the message holds its output."""


@dataclass
class Process:
    """A process started by ``start_process``; its output goes to ``log`` if given."""

    popen: subprocess.Popen[bytes]
    log: Path | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        """What it wrote so far, if it writes to a log."""
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start_process(
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    log: Path | None = None,
    quiet: bool = True,
    cwd: Path | None = None,
) -> Process:
    """Start ``args``; its output goes to ``log`` if given, else nowhere if ``quiet``,
    else to this process's own output."""
    if log is None:
        output = subprocess.DEVNULL if quiet else None
        popen = subprocess.Popen(list(args), env=dict(env), stdout=output, stderr=output, cwd=cwd)
    else:
        with log.open("wb") as handle:  # the child keeps its own copy
            popen = subprocess.Popen(
                list(args), env=dict(env), stdout=handle, stderr=subprocess.STDOUT, cwd=cwd
            )
    return Process(popen, log)


def _answers(url: str, ok_only: bool) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:  # noqa: S310 (http only)
            return not ok_only or answer.status == 200
    except urllib.error.HTTPError:
        return not ok_only  # an answer, but not 200
    except (urllib.error.URLError, OSError):
        return False


def wait_ready(
    url: str, process: Process | None = None, *, timeout: float = 30, ok_only: bool = True
) -> None:
    """Return once ``url`` answers (200 unless ``ok_only`` is False); raise NotReady,
    with the process's output, if ``process`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not _answers(url, ok_only):
        exited = process is not None and process.popen.poll() is not None
        if exited or time.monotonic() > deadline:
            output = process.output() if process is not None else ""
            raise NotReady(f"{url} did not answer" + (f":\n{output}" if output else ""))
        time.sleep(0.1)


def start_gateway(
    env: Mapping[str, str],
    *,
    workers: int = 1,
    log_dir: Path | None = None,
    quiet: bool = True,
    timeout: float = 30,
) -> tuple[Process, str]:
    """``contacts-ingest serve`` on a free port, once its /readyz answers 200: the
    process and its base URL. Stopped (and NotReady raised) if it never does."""
    port = free_port()
    log = log_dir / f"serve-{port}.log" if log_dir is not None else None
    process = start_process(
        [CLI, "serve", "--port", str(port), "--workers", str(workers)], env, log=log, quiet=quiet
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{base}/readyz", process, timeout=timeout)
    except NotReady:
        process.stop()
        raise
    return process, base


def start_worker(
    env: Mapping[str, str],
    *,
    concurrency: int = 2,
    log: Path | None = None,
    quiet: bool = True,
) -> Process:
    """``contacts-ingest worker`` with ``concurrency`` pool processes."""
    return start_process(
        [CLI, "worker", "--concurrency", str(concurrency)], env, log=log, quiet=quiet
    )
