"""`serve` and `worker` as an operator runs them: their logs, their ports, their signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import requests

from contacts_ingest.infrastructure.settings import Settings
from tests.conftest import free_port, unique
from tests.e2e.conftest import (
    CLI,
    Process,
    Service,
    create_key,
    service_env,
    start_gateway,
    start_worker,
    wait_final,
)

pytestmark = pytest.mark.e2e


def not_json(log: Path) -> list[str]:
    """The lines of ``log`` that are not one JSON object each."""
    bad = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            if isinstance(json.loads(line), dict):
                continue
        except ValueError:
            pass
        bad.append(line)
    return bad


def stop_with(process: Process, number: signal.Signals) -> int:
    process.popen.send_signal(number)
    return process.popen.wait(timeout=60)


def test_every_line_serve_and_worker_write_is_one_json_object(
    settings: Settings, tmp_path: Path
) -> None:
    env = service_env(settings)
    env.pop("LOG_FORMAT", None)  # the default: json
    worker = start_worker(env, tmp_path, name="json-worker")
    gateway, base = start_gateway(env, tmp_path)
    try:
        auth = {"Authorization": f"Bearer {create_key(env, unique('user'))}"}
        accepted = requests.post(
            f"{base}/io/contacts/contacts",
            json={"email": "jo@example.com"},
            headers=auth,
            timeout=10,
        )
        assert accepted.status_code == 202
        assert wait_final(base, auth, accepted.json()["data"]["job_id"])["status"] == "succeeded"
        refused = requests.post(f"{base}/io/contacts/contacts", data=b"{", headers=auth, timeout=10)
        assert refused.status_code in (400, 415)
    finally:
        # How Docker stops them (SIGTERM); then the worker's Ctrl-C path as well.
        assert stop_with(gateway, signal.SIGTERM) == 0
        assert stop_with(worker, signal.SIGTERM) == 0
    second = start_worker(env, tmp_path, name="json-worker-interrupted")
    deadline = time.monotonic() + 60
    while " ready." not in second.output() and time.monotonic() < deadline:
        time.sleep(0.2)
    stop_with(second, signal.SIGINT)  # its exit status is Celery's own choice for a Ctrl-C
    logs = [process.log for process in (gateway, worker, second) if process.log is not None]
    assert len(logs) == 3
    for log in logs:
        assert log.read_text().strip(), log
        assert not_json(log) == [], log
    text = "".join(log.read_text() for log in logs)
    # What used to be plain text: granian's own lines, Celery's shutdown notices.
    loggers = {json.loads(line)["logger"] for line in text.splitlines() if line.strip()}
    assert "_granian" in loggers
    assert "Warm shutdown" in text
    assert "seems quite high" not in text  # granian's warning about our chosen --threads


def test_a_second_serve_on_a_taken_port_is_refused_and_the_first_keeps_it(
    service: Service, tmp_path: Path
) -> None:
    port = int(service.base.rsplit(":", 1)[1])
    second = subprocess.run(
        [CLI, "serve", "--port", str(port), "--workers", "1"],
        env=service.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode != 0
    assert f"port {port} on 127.0.0.1 is already in use" in second.stderr
    assert requests.get(f"{service.base}/readyz", timeout=10).status_code == 200


def test_serve_refuses_a_port_another_program_listens_on(settings: Settings) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        done = subprocess.run(
            [CLI, "serve", "--port", str(port)],
            env=service_env(settings),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode != 0
    assert "already in use" in done.stderr


def test_ctrl_c_stops_serve_and_its_worker_processes_ten_times_in_a_row(
    settings: Settings, tmp_path: Path
) -> None:
    env = service_env(settings, LOG_FORMAT="text")
    port = free_port()
    for attempt in range(10):
        log = tmp_path / f"serve-{attempt}.log"
        with log.open("wb") as out:
            serve = subprocess.Popen(
                [CLI, "serve", "--port", str(port), "--workers", "1"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, as in a terminal
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            assert serve.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        processes = psutil.Process(serve.pid).children(recursive=True)
        assert processes  # granian's worker process
        os.killpg(serve.pid, signal.SIGINT)  # what Ctrl-C does: the whole group at once
        assert serve.wait(timeout=60) == 0, log.read_text()
        psutil.wait_procs(processes, timeout=10)
        assert not [p for p in processes if p.is_running()], (attempt, log.read_text())
        # granian had to kill a worker that missed the signal: it waited 30 s for it.
        assert "refused to gracefully stop" not in log.read_text(), attempt
