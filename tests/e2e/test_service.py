"""The whole path over HTTP: gateway -> Redis -> Celery worker -> PostgreSQL -> status."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.jobs.job import ContactJob
from contacts_ingest.jobs.messages import CeleryMessages
from contacts_ingest.producer import ContactProducer
from tests.conftest import CONTACT_FIELDS, unique
from tests.e2e.conftest import (
    CLI,
    Service,
    service_env,
    start_gateway,
    start_worker,
    wait_final,
)

pytestmark = pytest.mark.e2e

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def test_keys_create_prints_the_key_and_nothing_else(service: Service) -> None:
    done = subprocess.run(
        [CLI, "keys", "create", "--user", unique("user")],
        env=service.env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert re.fullmatch(r"cik_[A-Za-z0-9_-]{43}\n", done.stdout)


def test_the_reference_example_is_accepted_and_stored(service: Service) -> None:
    _, auth = service.new_user()
    body = {
        "email": "bob@example.com",
        "firstName": "Bob",
        "lastName": "Smith",
        "phone": "+1 555 000 1234",
        "company": "Acme Corp",
        "jobTitle": "Product Manager",
        "socialProfiles": {
            "linkedin": "https://linkedin.com/in/bobsmith",
            "twitter": "@bobsmith",
        },
        "status": "subscribed",
        "source": "signup",
    }
    accepted = service.post(auth, body)
    assert accepted.status_code == 202
    job = accepted.json()["data"]
    assert accepted.headers["Location"] == f"/io/contacts/jobs/{job['job_id']}"
    assert accepted.headers["RateLimit-Policy"] == '"writes";q=200;w=60'

    final = service.wait_final(auth, job["job_id"])
    assert list(final) == [
        "job_id",
        "status",
        "operation",
        "created_at",
        "finished_at",
        "result",
        "error",
    ]
    assert (final["status"], final["operation"], final["error"]) == ("succeeded", "create", None)
    assert TIMESTAMP.match(final["created_at"])
    assert TIMESTAMP.match(final["finished_at"])
    assert final["result"]["code"] == 201
    contact = final["result"]["data"]
    assert list(contact) == CONTACT_FIELDS
    assert contact["id"].startswith("cnt_")
    assert {k: contact[k] for k in ("email", "first_name", "last_name", "phone")} == {
        "email": "bob@example.com",
        "first_name": "Bob",
        "last_name": "Smith",
        "phone": "+1 555 000 1234",
    }
    assert contact["social_profiles"] == body["socialProfiles"]
    assert (contact["status"], contact["lead_score"], contact["source"]) == (
        "subscribed",
        0,
        "signup",
    )
    assert TIMESTAMP.match(contact["created_at"])


def test_a_job_is_queued_until_a_worker_takes_it(
    settings: Settings, service: Service, log_dir: Path
) -> None:
    # A gateway whose queue no worker serves yet.
    env = service_env(settings, CELERY_QUEUE=unique("contacts-idle"))
    gateway, base = start_gateway(env, log_dir)
    worker = None
    try:
        _, auth = service.new_user()
        accepted = requests.post(
            f"{base}/io/contacts/contacts", json={"email": "q@example.com"}, headers=auth, timeout=5
        )
        job_id = accepted.json()["data"]["job_id"]
        time.sleep(0.5)
        queued = requests.get(f"{base}/io/contacts/jobs/{job_id}", headers=auth, timeout=5)
        assert queued.json()["data"]["status"] == "queued"
        assert queued.json()["data"]["finished_at"] is None
        worker = start_worker(env, log_dir, name="late-worker")
        assert wait_final(base, auth, job_id)["result"]["code"] == 201
    finally:
        gateway.stop()
        if worker:
            worker.stop()


@pytest.mark.parametrize("second", ["dup@example.com", "DUP@EXAMPLE.COM"])
def test_a_duplicate_create_fails_409_whatever_the_case(service: Service, second: str) -> None:
    _, auth = service.new_user()
    first = service.post(auth, {"email": "dup@example.com"}).json()["data"]["job_id"]
    assert service.wait_final(auth, first)["result"]["code"] == 201
    again = service.post(auth, {"email": second}).json()["data"]["job_id"]
    final = service.wait_final(auth, again)
    assert final["status"] == "failed"
    assert final["result"] is None
    assert final["error"] == {"code": 409, "message": "A contact with this email already exists"}


def test_upsert_creates_then_updates_with_merge(service: Service) -> None:
    _, auth = service.new_user()
    created = service.post(
        auth,
        {
            "email": "up@example.com",
            "firstName": "Ann",
            "socialProfiles": {"twitter": "@ann", "reddit": "ann"},
            "customFields": {"plan": "free", "seats": 1},
        },
        upsert=True,
    )
    first = service.wait_final(auth, created.json()["data"]["job_id"])
    assert created.json()["data"]["operation"] == "upsert"
    updated = service.post(
        auth,
        {
            "email": "UP@example.com",
            "company": "Acme",
            "socialProfiles": {"twitter": None, "youtube": "annvids"},
            "customFields": {"plan": "pro"},
        },
        upsert=True,
    )
    second = service.wait_final(auth, updated.json()["data"]["job_id"])
    assert (first["result"]["code"], second["result"]["code"]) == (201, 200)
    before, after = first["result"]["data"], second["result"]["data"]
    assert after["id"] == before["id"]
    assert after["first_name"] == "Ann"
    assert after["company"] == "Acme"
    assert after["social_profiles"] == {"reddit": "ann", "youtube": "annvids"}
    assert after["custom_fields"] == {"plan": "pro", "seats": 1}
    assert after["status"] == "subscribed"


def test_validation_happens_at_the_gateway_at_each_boundary(service: Service) -> None:
    _, auth = service.new_user()
    assert service.post(auth, {"email": "b@example.com", "firstName": "x" * 100}).status_code == 202
    refused = service.post(auth, {"email": "b2@example.com", "firstName": "x" * 101})
    assert refused.status_code == 400
    assert refused.json() == {
        "error": "firstName must be 100 characters or fewer",
        "errors": [{"field": "firstName", "message": "firstName must be 100 characters or fewer"}],
    }
    status = service.post(auth, {"email": "b3@example.com", "status": "active"})
    assert status.json()["error"] == (
        "status must be subscribed, unsubscribed, bounced, or complained"
    )


def test_missing_unknown_and_revoked_keys_are_401(service: Service) -> None:
    body = {"email": "k@example.com"}
    assert service.post({}, body).status_code == 401
    assert service.post({"Authorization": "Bearer cik_nope"}, body).json() == {
        "error": "A valid API key is required"
    }
    user = unique("user")
    done = subprocess.run(
        [CLI, "keys", "create", "--user", user], env=service.env, capture_output=True, text=True
    )
    key = done.stdout.strip()
    auth = {"Authorization": f"Bearer {key}"}
    assert service.post(auth, body).status_code == 202
    subprocess.run([CLI, "keys", "revoke", key], env=service.env, check=True, capture_output=True)
    time.sleep(0.7)  # the gateway's key cache TTL in these tests is 0.5 s
    assert service.post(auth, body).status_code == 401


def test_another_users_job_is_404(service: Service) -> None:
    _, alice = service.new_user()
    _, bob = service.new_user()
    job_id = service.post(alice, {"email": "mine@example.com"}).json()["data"]["job_id"]
    service.wait_final(alice, job_id)
    answer = service.job(bob, job_id)
    assert answer.status_code == 404
    assert "mine@example.com" not in answer.text
    assert service.job(alice, "job_" + "0" * 32).status_code == 404


def test_the_201st_write_in_a_minute_is_429_and_another_user_is_unaffected(
    service: Service,
) -> None:
    _, auth = service.new_user()
    with requests.Session() as session:
        started = time.monotonic()
        answers = [
            session.post(
                f"{service.base}/io/contacts/contacts",
                json={"email": f"r{i}@example.com"},
                headers=auth,
                timeout=10,
            )
            for i in range(200)
        ]
        elapsed = time.monotonic() - started
        odd = [(i, a.status_code, a.text) for i, a in enumerate(answers) if a.status_code != 202]
        assert not odd, f"{len(odd)} of 200 not accepted in {elapsed:.1f}s, first: {odd[:3]}"
        refused = session.post(
            f"{service.base}/io/contacts/contacts",
            json={"email": "late@example.com"},
            headers=auth,
            timeout=10,
        )
    assert refused.status_code == 429, (refused.status_code, refused.text, elapsed)
    assert refused.json() == {
        "error": "Too many requests \u2014 200 writes per user per 60 seconds"
    }
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["RateLimit"].startswith('"writes";r=0;t=')
    _, other = service.new_user()
    assert service.post(other, {"email": "late@example.com"}).status_code == 202


def test_an_internal_producer_job_is_polled_like_any_other(
    service: Service, settings: Settings
) -> None:
    user, auth = service.new_user()
    producer = ContactProducer(settings)
    job_id = producer.enqueue(user, {"email": "internal@example.com", "source": "crm"})
    final = service.wait_final(auth, job_id)
    assert final["result"]["code"] == 201
    assert final["result"]["data"]["source"] == "crm"
    assert producer.status(job_id, user) == final
    poison = producer.enqueue(user, ["not", "a", "contact"])
    failed = service.wait_final(auth, poison)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == 400
    assert failed["error"]["message"] == "Request body must be a JSON object"


def test_a_redelivered_job_id_is_a_no_op(service: Service, settings: Settings) -> None:
    user, auth = service.new_user()
    producer = ContactProducer(settings)
    job_id = producer.enqueue(user, {"email": "once@example.com"}, upsert=True)
    first = service.wait_final(auth, job_id)
    # The broker hands the very same message over again (as after a lost ack).
    message = ContactJob(
        job_id, user, "upsert", {"email": "once@example.com", "phone": "9"}, 1, None
    )
    queue, head, tail = CeleryMessages(settings)(message)
    redis.Redis.from_url(settings.redis_url).lpush(queue, head + b"1" + tail)
    time.sleep(1.0)
    assert service.wait_final(auth, job_id) == first
    check = producer.enqueue(user, {"email": "once@example.com"}, upsert=True)
    contact = service.wait_final(auth, check)["result"]["data"]
    assert contact["phone"] is None


def test_health_and_readiness(service: Service) -> None:
    assert requests.get(f"{service.base}/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(f"{service.base}/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"redis": "ok", "postgres": "ok"}


def test_hostile_requests_at_the_real_server_get_clear_4xx(service: Service) -> None:
    _, auth = service.new_user()
    url = f"{service.base}/io/contacts/contacts"
    headers = {**auth, "Content-Type": "application/json"}

    def chunks(raw: bytes) -> Iterator[bytes]:
        for start in range(0, len(raw), 4096):
            yield raw[start : start + 4096]

    small = requests.post(url, data=chunks(b'{"email": "ch@example.com"}'), headers=headers)
    assert small.status_code == 202  # chunked transfer, no Content-Length
    big = b'{"email": "ch2@example.com", "x": "' + b"a" * 100_000 + b'"}'
    refused = requests.post(url, data=chunks(big), headers=headers, timeout=10)
    assert refused.status_code == 413
    assert refused.json() == {"error": "Request body must be 64 KiB or smaller"}

    huge_head = requests.post(
        url, json={"email": "h@example.com"}, headers={**headers, "X-Pad": "a" * 100_000}
    )
    assert huge_head.status_code == 431

    nested = b'{"email": "n@example.com", "customFields": {"a": ' + b"[" * 900 + b"]" * 900 + b"}}"
    deep = requests.post(url, data=nested, headers=headers, timeout=10)
    assert deep.status_code == 400
    assert deep.json()["error"] == "customFields must not nest more than 32 levels deep"

    for raw in (b'{"email": "x@example.com", "firstName": "\xff"}', b"[" * 5000, b"\x00"):
        assert requests.post(url, data=raw, headers=headers, timeout=10).status_code == 400
    odd = requests.get(f"{service.base}/io/contacts/jobs/%00%ff", headers=auth, timeout=10)
    assert odd.status_code == 404


def test_numbers_beyond_64_bits_round_trip_through_postgresql(service: Service) -> None:
    _, auth = service.new_user()
    body = b'{"email": "big@example.com", "customFields": {"n": 123456789012345678901234567890}}'
    accepted = requests.post(
        f"{service.base}/io/contacts/contacts",
        data=body,
        headers={**auth, "Content-Type": "application/json"},
        timeout=10,
    )
    final = service.wait_final(auth, accepted.json()["data"]["job_id"])
    assert final["status"] == "succeeded"
    assert final["result"]["data"]["custom_fields"]["n"] > 10**29


def test_custom_fields_shaped_like_encoder_hints_are_stored_as_sent(service: Service) -> None:
    # Objects like {"__type__": ..., "__value__": ...} mean something to kombu's JSON
    # decoder (a datetime; or an error that used to drop the job after its 202).
    _, auth = service.new_user()
    hinted = {
        "when": {"__type__": "datetime", "__value__": "2020-01-01T00:00:00"},
        "what": {"__type__": "no-such-type", "__value__": 1},
    }
    accepted = requests.post(
        f"{service.base}/io/contacts/contacts",
        json={"email": "hints@example.com", "customFields": hinted},
        headers=auth,
        timeout=10,
    )
    assert accepted.status_code == 202
    final = service.wait_final(auth, accepted.json()["data"]["job_id"])
    assert final["status"] == "succeeded", final
    assert final["result"]["data"]["custom_fields"] == hinted
