"""`contacts-ingest dev` brings up the whole system with embedded PostgreSQL and Redis."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
import redis
import requests

from tests.conftest import free_port
from tests.e2e.conftest import CLI, wait_final
from tests.e2e.sockets import listening, non_loopback_ipv4

pytestmark = pytest.mark.e2e


def read_until(process: subprocess.Popen[str], pattern: str, timeout: float) -> str:
    """Read the process's stdout until a line matches ``pattern``; return everything read."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        seen += line
        if re.search(pattern, line):
            return seen
    raise AssertionError(f"no line matching {pattern!r} within {timeout}s; got:\n{seen}")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def child(dev: psutil.Process, command: str) -> psutil.Process:
    """The one process dev started to run ``command``."""
    [found] = [c for c in dev.children() if command in c.cmdline()]
    return found


def assert_private_to_its_user(data: Path, dev: psutil.Process) -> None:
    """Other local users can enter none of dev's folders nor use its Redis."""
    # As root, PostgreSQL runs as an account of its own, which may pass through (0710).
    assert mode(data) == (0o700 if os.geteuid() else 0o710)
    redis_files = [path for path in (data / "redis").rglob("*") if path.is_file()]
    assert redis_files
    assert {mode(path) & 0o077 for path in [data / "redis", *redis_files]} == {0}
    assert mode(data / "postgres") & 0o077 == 0

    [redis_server] = [c for c in dev.children() if "redis-server" in c.name()]
    [(_, redis_port)] = listening(redis_server.pid)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=redis_port, socket_timeout=5).ping()
    # Its password is in the environment of dev's processes (their owner's), and on no
    # command line (which every local user can read).
    url = urlsplit(child(dev, "worker").environ()["REDIS_URL"])
    assert url.port == redis_port
    assert url.password
    assert redis.Redis(port=redis_port, password=url.password, socket_timeout=5).ping()
    command_lines = [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])]
    assert not [line for line in command_lines if url.password in line]


def test_dev_runs_the_service_on_embedded_servers_and_stops_cleanly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    port = free_port()
    metrics_port = free_port()
    env["WORKER_METRICS_PORT"] = str(metrics_port)  # the default port may be taken here
    data = tmp_path / "data"
    data.mkdir(mode=0o755)  # made by hand, open to all: dev tightens it
    data.chmod(0o755)
    process = subprocess.Popen(
        [CLI, "dev", "--data-dir", str(data), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "dev.log").open("w"),
        text=True,
    )
    try:
        banner = read_until(process, r"^\s+curl http", timeout=120)
        key = re.search(r"API key:\s+(cik_\S+)", banner)
        assert key, banner
        auth = {"Authorization": f"Bearer {key.group(1)}"}
        base = f"http://127.0.0.1:{port}"
        assert f"curl -i {base}/io/contacts/contacts" in banner

        accepted = requests.post(
            f"{base}/io/contacts/contacts",
            json={"email": "dev@example.com", "firstName": "Dev"},
            headers=auth,
            timeout=10,
        )
        assert accepted.status_code == 202
        final = wait_final(base, auth, accepted.json()["data"]["job_id"])
        assert final["result"]["code"] == 201
        children = psutil.Process(process.pid).children(recursive=True)

        assert_private_to_its_user(data, psutil.Process(process.pid))
        # Everything dev starts listens on loopback only, the worker's metrics included.
        sockets = listening(process.pid)
        assert {address for address, _ in sockets} == {"127.0.0.1"}, sockets
        assert {port, metrics_port} <= {bound_port for _, bound_port in sockets}
        for address in non_loopback_ipv4():
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((address, metrics_port), timeout=5).close()
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    assert (tmp_path / "data" / "postgres" / "PG_VERSION").exists()
    assert (tmp_path / "data" / "redis").is_dir()
    time.sleep(1)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(tmp_path) in " ".join(p.info["cmdline"] or [])
    ], "an embedded server outlived dev"
