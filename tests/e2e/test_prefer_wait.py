"""``Prefer: wait=N`` through the real gateway and worker: the synchronous answer on request."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import pytest
import requests

from contacts_ingest.infrastructure.settings import Settings
from tests.conftest import unique
from tests.e2e.conftest import Service, create_key, service_env, start_gateway
from tests.e2e.test_metrics import value

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


def test_one_users_waiting_replays_never_hold_back_another_user(
    settings: Settings, log_dir: Path
) -> None:
    # No worker consumes this queue: every job stays queued, so every wait runs out.
    env = service_env(settings, CELERY_QUEUE=unique("contacts-unserved"))
    gateway, base = start_gateway(env, log_dir)
    try:
        alice = {"Authorization": f"Bearer {create_key(env, unique('user'))}"}
        bob = {"Authorization": f"Bearer {create_key(env, unique('user'))}"}
        body = {"email": "replayed@example.com"}
        replay = {**alice, "Idempotency-Key": "one-key", "Prefer": "wait=10"}
        assert post(base, {**alice, "Idempotency-Key": "one-key"}, body).status_code == 202

        # Replays of an accepted key cost no quota: 300 of them at once, all asking to wait.
        with ThreadPoolExecutor(max_workers=300) as pool:
            replays = [pool.submit(post, base, replay, body) for _ in range(300)]
            answered, waiting = wait(replays, timeout=8)  # less than the 10 s they asked for
            assert len(waiting) == settings.wait_max_per_user
            assert all(r.result().status_code == 202 for r in answered)
            assert not any("Preference-Applied" in r.result().headers for r in answered)

            # Another user is answered while alice's waits are still running.
            other = requests.post(f"{base}/io/contacts/contacts", json=body, headers=bob, timeout=5)
            assert other.status_code == 202
            assert not any(r.done() for r in waiting)
        assert all(r.result().status_code == 202 for r in waiting)
        scraped = requests.get(f"{base}/metrics", timeout=5).text
        declined = 300 - settings.wait_max_per_user
        assert value(scraped, "contacts_gateway_waits_declined_total") == declined
    finally:
        gateway.stop()
