"""`contacts-ingest dev` brings up the whole system with embedded PostgreSQL and Redis."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests

from tests.conftest import free_port
from tests.e2e.conftest import CLI, wait_final

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


def test_dev_runs_the_service_on_embedded_servers_and_stops_cleanly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    port = free_port()
    process = subprocess.Popen(
        [CLI, "dev", "--data-dir", str(tmp_path / "data"), "--port", str(port)],
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
