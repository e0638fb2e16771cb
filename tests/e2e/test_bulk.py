"""Bulk: the batch route and the import command, through the real gateway and worker."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import unique
from tests.e2e.conftest import CLI, Service

pytestmark = pytest.mark.e2e


def test_a_batch_of_1000_reports_per_item_results(service: Service) -> None:
    _, auth = service.new_user()
    contacts: list[object] = [
        {"email": f"batch{i}@example.com", "customFields": {"pad": "x" * 200}} for i in range(998)
    ]
    contacts += [{"email": "broken"}, {"email": "batch0@example.com"}]
    answer = requests.post(
        f"{service.base}/io/contacts/contacts/batch",
        json={"contacts": contacts},  # ~260 KB: over the single route's 64 KiB
        headers={**auth, "Prefer": "wait=10"},
        timeout=30,
    )
    if answer.status_code == 202:  # a slow machine: poll instead
        final = service.wait_final(auth, answer.json()["data"]["job_id"], timeout=60)
        data = {"counts": final["result"]["counts"], "items": final["result"]["items"]}
    else:
        assert answer.status_code == 200, answer.text
        data = answer.json()["data"]
    assert data["counts"] == {"created": 998, "updated": 0, "failed": 2}
    assert data["items"][998]["errors"] == [
        {"field": "email", "message": "A valid email is required"}
    ]
    assert data["items"][999]["code"] == 409


def test_import_streams_a_csv_file_and_summarises(service: Service, tmp_path: Path) -> None:
    user = unique("user")
    path = tmp_path / "contacts.csv"
    with path.open("w") as handle:
        handle.write("email,firstName,socialProfiles.twitter,customFields.plan\n")
        for i in range(2500):
            email = "not-an-email" if i in (10, 2001) else f"imp{i}@example.com"
            handle.write(f"{email},Imp {i},@imp{i},gold\n")
    done = subprocess.run(
        [CLI, "import", str(path), "--user", user],
        env=service.env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:4] == [
        "accepted        2,500",
        "created         2,498",
        "updated             0",
        "failed              2",
    ]
    assert lines[4:] == [
        "first errors:",
        "  line 12: email: A valid email is required",
        "  line 2003: email: A valid email is required",
    ]
    assert "rows" in done.stderr  # the progress bar, with its rate and ETA, on stderr

    # The same file again with --upsert updates every good row; JSONL works alike.
    again = subprocess.run(
        [CLI, "import", str(path), "--user", user, "--upsert"],
        env=service.env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.stdout.splitlines()[1:4] == [
        "created             0",
        "updated         2,498",
        "failed              2",
    ]
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps({"email": f"j{i}@example.com"}) for i in range(3)) + "\n{oops\n"
    )
    third = subprocess.run(
        [CLI, "import", str(jsonl), "--user", user],
        env=service.env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert third.stdout.splitlines()[:4] == [
        "accepted            4",
        "created             3",
        "updated             0",
        "failed              1",
    ]
    assert "  line 4: body: Request body must be valid JSON" in third.stdout.splitlines()


def test_import_without_waiting_prints_each_batch_job_id(service: Service, tmp_path: Path) -> None:
    user = unique("user")
    path = tmp_path / "nowait.jsonl"
    path.write_text(
        "".join(json.dumps({"email": f"nw{i}@example.com"}) + "\n" for i in range(1500))
    )
    done = subprocess.run(
        [CLI, "import", str(path), "--user", user, "--no-wait"],
        env=service.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    job_ids = done.stdout.split()
    assert len(job_ids) == 2
    assert all(j.startswith("job_") for j in job_ids)
    assert "enqueued 1,500 rows in 2 batch jobs" in done.stderr
    counts = [wait_final_for(service, user, job_id)["result"]["counts"] for job_id in job_ids]
    assert sum(c["created"] for c in counts) == 1500


def wait_final_for(service: Service, user: str, job_id: str) -> Any:
    from contacts_ingest.infrastructure.settings import Settings
    from contacts_ingest.producer import ContactProducer

    producer = ContactProducer(
        Settings(
            database_url=service.env["DATABASE_URL"],
            redis_url=service.env["REDIS_URL"],
            redis_key_prefix=service.env["REDIS_KEY_PREFIX"],
            celery_queue=service.env["CELERY_QUEUE"],
        )
    )
    deadline = time.monotonic() + 60
    while True:
        status = producer.status(job_id, user)
        if status and status["status"] in ("succeeded", "failed"):
            return status
        assert time.monotonic() < deadline, f"{job_id} not final"
        time.sleep(0.1)


def test_import_with_no_worker_running_says_so(service: Service, tmp_path: Path) -> None:
    path = tmp_path / "stuck.jsonl"
    path.write_text(json.dumps({"email": "stuck@example.com"}) + "\n")
    # A queue no worker consumes: the batch stays queued.
    env = {**service.env, "CELERY_QUEUE": unique("no-worker")}
    importing = subprocess.Popen(
        [CLI, "import", str(path), "--user", unique("user")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen: list[str] = []
    assert importing.stderr is not None
    stderr = importing.stderr
    reader = threading.Thread(target=lambda: seen.extend(iter(stderr.readline, "")))
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("no worker has taken a job" in line for line in seen):
            assert importing.poll() is None, "".join(seen)
            assert time.monotonic() < deadline, "".join(seen)
            time.sleep(0.2)
    finally:
        importing.kill()
        importing.wait(timeout=10)
        reader.join(timeout=10)
    [hint] = [line for line in seen if "no worker has taken a job" in line]
    assert "no worker has taken a job for 10 s" in hint
    assert "--no-wait" in hint
