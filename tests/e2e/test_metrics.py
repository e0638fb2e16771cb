"""Prometheus metrics from the real gateway (all its processes) and a real worker."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from contacts_ingest.infrastructure.settings import Settings
from tests.conftest import free_port, unique
from tests.e2e.conftest import (
    Service,
    create_key,
    service_env,
    start_gateway,
    start_worker,
    wait_final,
)
from tests.e2e.sockets import non_loopback_ipv4, wait_listening

pytestmark = pytest.mark.e2e


def value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}(?:{{(.*)}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += float(match.group(2))
    return total


def test_gateway_and_worker_metrics_count_what_happened(settings: Settings, log_dir: Path) -> None:
    port = free_port()
    env = service_env(
        settings, CELERY_QUEUE=unique("contacts-metrics"), WORKER_METRICS_PORT=str(port)
    )
    worker = start_worker(env, log_dir, "metrics-worker")
    gateway, base = start_gateway(env, log_dir, workers=2)
    try:
        auth = {"Authorization": f"Bearer {create_key(env, unique('user'))}"}
        job_ids = [
            requests.post(f"{base}/io/contacts/contacts", json={"email": f"m{i}@example.com"},
                          headers=auth, timeout=5).json()["data"]["job_id"]
            for i in range(20)
        ]  # fmt: skip
        requests.post(f"{base}/io/contacts/contacts", json={"email": "x"}, headers=auth, timeout=5)
        for job_id in job_ids:
            wait_final(base, auth, job_id)

        # Two gateway processes served these; the scrape adds both up.
        gateway_text = requests.get(f"{base}/metrics", timeout=5).text
        route = {"method": "POST", "route": "/io/contacts/contacts"}
        assert value(gateway_text, "contacts_gateway_requests_total", **route, code="202") == 20
        assert value(gateway_text, "contacts_gateway_requests_total", **route, code="400") == 1

        worker_text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        jobs = value(worker_text, "contacts_worker_jobs_total", status="succeeded", code="201")
        assert jobs == 20
        assert value(worker_text, "contacts_worker_job_duration_seconds_count") >= 20
        assert "contacts_worker_queue_depth" in worker_text
        assert "contacts_worker_retries_total" in worker_text
    finally:
        gateway.stop()
        worker.stop()


def test_control_pings_leave_the_unacked_count_unchanged(settings: Settings, log_dir: Path) -> None:
    # The compose healthcheck pings every 30 s; replies must not look like jobs in hand.
    port = free_port()
    env = service_env(settings, CELERY_QUEUE=unique("contacts-ping"), WORKER_METRICS_PORT=str(port))
    worker = start_worker(env, log_dir, "ping-worker")
    try:
        metrics = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 30
        while True:
            try:
                before = value(requests.get(metrics, timeout=2).text, "contacts_worker_unacked")
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "worker metrics never came up"
                time.sleep(0.2)
        answered = 0
        for _ in range(5):
            ping = subprocess.run(
                [sys.executable, "-m", "celery", "-A", "worker.app", "inspect", "ping",
                 "--timeout", "5"],
                env=env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            answered += "pong" in ping.stdout
        assert answered >= 4, "the worker should answer its pings"
        after = value(requests.get(metrics, timeout=2).text, "contacts_worker_unacked")
        assert after == before
    finally:
        worker.stop()


def test_worker_metrics_listen_on_loopback_unless_configured_otherwise(
    settings: Settings, log_dir: Path
) -> None:
    port = free_port()
    env = service_env(
        settings, CELERY_QUEUE=unique("contacts-metrics"), WORKER_METRICS_PORT=str(port)
    )
    worker = start_worker(env, log_dir, "metrics-loopback-worker", concurrency=1)
    try:
        assert wait_listening(worker.popen.pid, port) == {"127.0.0.1"}
        assert requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 200
        for address in non_loopback_ipv4():
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((address, port), timeout=5).close()
    finally:
        worker.stop()

    # What docker-compose.yml sets, so that Prometheus on the compose network can scrape.
    port = free_port()
    env.update(WORKER_METRICS_PORT=str(port), WORKER_METRICS_HOST="0.0.0.0")  # noqa: S104
    worker = start_worker(env, log_dir, "metrics-any-worker", concurrency=1)
    try:
        assert wait_listening(worker.popen.pid, port) == {"0.0.0.0"}  # noqa: S104
    finally:
        worker.stop()


def test_serve_clears_stale_samples_from_the_metrics_folder_and_nothing_else(
    settings: Settings, log_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "multiproc"
    (folder / "reports").mkdir(parents=True)
    foreign = {
        folder / "README.txt": "not a metrics file",
        folder / "reports" / "2026.csv": "a,b",
        folder / "reports" / "counter_1.db": "a subfolder is never ours",
    }
    for path, text in foreign.items():
        path.write_text(text)
    stale = folder / "counter_999999.db"  # a sample file of a process long gone
    stale.write_bytes(b"")
    env = service_env(settings, PROMETHEUS_MULTIPROC_DIR=str(folder))
    gateway, base = start_gateway(env, log_dir)
    try:
        assert requests.get(f"{base}/metrics", timeout=5).status_code == 200
        assert not stale.exists()
        assert {path: path.read_text() for path in foreign} == foreign
    finally:
        gateway.stop()


def test_made_up_methods_never_grow_the_metrics(service: Service) -> None:
    url = urlsplit(service.base)
    before = len(requests.get(f"{service.base}/metrics", timeout=5).content)
    for i in range(100):
        method = f"{i:03d}".ljust(30_000, "X")
        with socket.create_connection((url.hostname, url.port)) as sock:
            sock.sendall(f"{method} /io/contacts/contacts HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            sock.settimeout(5)
            assert sock.recv(12).startswith(b"HTTP/1.1 4")
    scraped = requests.get(f"{service.base}/metrics", timeout=5)
    # A few new series (method "other"), never one per method: 100 would add 3 MB.
    assert len(scraped.content) - before < 50_000
    assert value(scraped.text, "contacts_gateway_requests_total", method="other") >= 100
