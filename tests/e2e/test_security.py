"""No caller sees or touches another user's data; keys never reach a log; hostile bodies
get a 4xx without growing the gateway's memory."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from tests.e2e.conftest import Service

pytestmark = pytest.mark.e2e


def gateway_processes(service: Service) -> list[psutil.Process]:
    """The ``serve`` process of ``service`` and its granian workers."""
    port = service.base.rsplit(":", 1)[1]
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "serve" in cmdline and port in cmdline:
            return [process, *process.children(recursive=True)]
    raise AssertionError("no serve process for the gateway's port")


def test_every_route_shows_a_second_user_nothing_of_the_first(service: Service) -> None:
    _, alice = service.new_user()
    _, bob = service.new_user()
    email = "private@example.com"
    job_id = service.post(alice, {"email": email, "firstName": "Alice"}).json()["data"]["job_id"]
    assert service.wait_final(alice, job_id)["result"]["code"] == 201

    # Bob's view of Alice's job: the same 404 as for a job that does not exist.
    for headers in (bob, alice):
        unknown = service.job(headers, "job_" + "0" * 32)
        assert (unknown.status_code, unknown.json()) == (404, {"error": "Job not found"})
    theirs = service.job(bob, job_id)
    assert (theirs.status_code, theirs.json()) == (404, {"error": "Job not found"})
    # Without a key, nothing at all.
    assert requests.get(f"{service.base}/io/contacts/jobs/{job_id}", timeout=5).status_code == 401
    # Contacts are per user: Bob's create of the same email is his own, not a 409, and
    # leaves Alice's contact untouched.
    bobs = service.post(bob, {"email": email, "firstName": "Bob"}).json()["data"]["job_id"]
    bob_contact = service.wait_final(bob, bobs)["result"]
    assert bob_contact["code"] == 201
    assert service.wait_final(alice, job_id)["result"]["data"]["first_name"] == "Alice"
    # The public routes carry no user data.
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert email not in requests.get(f"{service.base}{path}", timeout=5).text


def test_job_ids_are_128_random_bits(service: Service) -> None:
    _, auth = service.new_user()
    ids = {
        service.post(auth, {"email": f"id{i}@example.com"}).json()["data"]["job_id"]
        for i in range(50)
    }
    assert len(ids) == 50
    assert all(re.fullmatch(r"job_[0-9a-f]{32}", job_id) for job_id in ids)


def test_keys_never_reach_the_logs(service: Service, log_dir: Path) -> None:
    _, auth = service.new_user()
    key = auth["Authorization"].removeprefix("Bearer ")
    job_id = service.post(auth, {"email": "logged@example.com"}).json()["data"]["job_id"]
    service.wait_final(auth, job_id)
    service.post(auth, {"email": "not-an-email"})
    service.post({"Authorization": f"Bearer {key}x"}, {"email": "a@example.com"})
    service.post({"Authorization": key}, {"email": "b@example.com"})
    logs = "".join(path.read_text(errors="replace") for path in log_dir.glob("*.log"))
    assert job_id in logs  # the logs are the right ones, and they do mention the work
    assert key not in logs
    assert key[4:20] not in logs  # nor any recognisable piece of it


def test_hostile_bodies_get_4xx_and_leave_the_gateways_memory_flat(service: Service) -> None:
    _, auth = service.new_user()
    url = f"{service.base}/io/contacts/contacts"
    headers = {**auth, "Content-Type": "application/json"}

    def million_element_array() -> Iterator[bytes]:
        yield b'{"email": "m@example.com", "customFields": {"a": ['
        for _ in range(1000):
            yield b"0," * 1000
        yield b"0]}}"

    hostile: list[tuple[bytes, int]] = [
        (b'{"email": "n@example.com", "customFields": {"n": ' + b"9" * 60_000 + b"}}", 400),
        (b'{"email": "n@example.com", "customFields": {"n": 1e999}}', 400),
        (b'{"email": 1, "firstName": [], "lastName": {}, "phone": 2.5, "company": true,'
         b' "jobTitle": 3, "socialProfiles": "x", "status": 7, "customFields": [],'
         b' "source": {}, "workspaceId": false}', 400),
        (b'{"email": "first@example.com", "email": "second@example.com"}', 202),
        (b'{"email": "u@example.com", "firstName": "\\ud800"}', 400),
    ]  # fmt: skip
    gateway = gateway_processes(service)
    before = sum(p.memory_info().rss for p in gateway)
    for _ in range(20):
        refused = requests.post(url, data=million_element_array(), headers=headers, timeout=30)
        assert refused.status_code == 413
        for raw, expected in hostile:
            answer = requests.post(url, data=raw, headers=headers, timeout=10)
            assert answer.status_code == expected, (raw[:80], answer.text[:200])
            assert answer.json()  # always a JSON answer, never a bare 500
    after = sum(p.memory_info().rss for p in gateway)
    assert after - before < 40 * 1024 * 1024, f"gateway RSS grew {(after - before) >> 20} MiB"

    wrong = requests.post(url, data=hostile[2][0], headers=headers, timeout=10).json()
    fields = {error["field"] for error in wrong["errors"]}
    assert {"email", "firstName", "socialProfiles", "status", "customFields"} <= fields
