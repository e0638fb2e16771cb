"""``Prefer: wait=N`` through the real gateway and worker: the synchronous answer on request."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import requests

from contacts_ingest.infrastructure.settings import Settings
from tests.conftest import unique
from tests.e2e.conftest import Service, create_key, service_env, start_gateway

pytestmark = pytest.mark.e2e


def post(base: str, headers: dict[str, str], body: object, **params: str) -> requests.Response:
    return requests.post(
        f"{base}/io/contacts/contacts", json=body, headers=headers, params=params, timeout=20
    )


def test_a_client_that_waits_gets_the_synchronous_apis_answers(service: Service) -> None:
    _, auth = service.new_user()
    waiting = {**auth, "Prefer": "wait=10"}
    created = post(service.base, waiting, {"email": "sync@example.com", "firstName": "Syd"})
    assert created.status_code == 201, created.text
    assert created.headers["Preference-Applied"] == "wait=10"
    assert created.json()["data"]["email"] == "sync@example.com"
    assert created.json()["data"]["first_name"] == "Syd"
    assert created.headers["Location"].startswith("/io/contacts/jobs/job_")

    duplicate = post(service.base, waiting, {"email": "SYNC@example.com"})
    assert (duplicate.status_code, duplicate.json()) == (
        409,
        {"error": "A contact with this email already exists"},
    )
    updated = post(
        service.base, waiting, {"email": "sync@example.com", "company": "Acme"}, upsert="1"
    )
    assert updated.status_code == 200
    assert updated.json()["data"]["company"] == "Acme"
    assert updated.json()["data"]["id"] == created.json()["data"]["id"]

    invalid = post(service.base, waiting, {"email": "nope"})
    assert invalid.status_code == 400  # refused by the gateway, nothing to wait for


def test_a_job_not_final_in_time_is_a_plain_202_and_waiters_do_not_block_others(
    settings: Settings, log_dir: Path
) -> None:
    # A gateway whose queue no worker consumes: every job stays queued.
    env = service_env(settings, CELERY_QUEUE=unique("contacts-unserved"))
    gateway, base = start_gateway(env, log_dir)
    try:
        auth = {"Authorization": f"Bearer {create_key(env, unique('user'))}"}
        started = time.monotonic()
        late = post(base, {**auth, "Prefer": "wait=1"}, {"email": "late@example.com"})
        assert late.status_code == 202
        assert "Preference-Applied" not in late.headers
        assert 0.9 < time.monotonic() - started < 5

        waiters = [
            threading.Thread(
                target=post,
                args=(base, {**auth, "Prefer": "wait=5"}, {"email": f"w{i}@example.com"}),
            )
            for i in range(60)
        ]
        for waiter in waiters:
            waiter.start()
        time.sleep(1)  # all 60 are inside the gateway, waiting
        started = time.monotonic()
        prompt = post(base, auth, {"email": "prompt@example.com"})
        elapsed = time.monotonic() - started
        for waiter in waiters:
            waiter.join()
        assert prompt.status_code == 202
        assert elapsed < 1.0, f"a normal request took {elapsed:.2f}s beside 60 waiting ones"
    finally:
        gateway.stop()


def test_an_upsert_through_the_service_never_lifts_a_bounce(service: Service) -> None:
    _, auth = service.new_user()
    waiting = {**auth, "Prefer": "wait=10"}
    bounced = post(service.base, waiting, {"email": "bounce@example.com", "status": "bounced"})
    assert bounced.json()["data"]["status"] == "bounced"
    again = post(
        service.base, waiting, {"email": "bounce@example.com", "status": "subscribed"}, upsert="1"
    )
    assert again.status_code == 200
    assert again.json()["data"]["status"] == "bounced"
