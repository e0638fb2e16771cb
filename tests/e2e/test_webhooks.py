"""A webhook source pushing signed signups through the real gateway and worker."""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime

import pytest
import requests
from sqlalchemy import Engine, select
from standardwebhooks import Webhook

from contacts_ingest.infrastructure.schema import contacts
from tests.conftest import unique
from tests.e2e.conftest import CLI, Service, create_key, wait_final

pytestmark = pytest.mark.e2e


def cli(service: Service, *args: str) -> str:
    return subprocess.run(
        [CLI, *args], env=service.env, capture_output=True, text=True, check=True
    ).stdout.strip()


def signed(secret: str, body: bytes, msg_id: str) -> dict[str, str]:
    """The headers of a delivery, as a source signs it now."""
    now = datetime.now(UTC)
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body.decode()),
    }


def deliver(
    service: Service, path: str, secret: str, body: bytes, msg_id: str
) -> requests.Response:
    return requests.post(
        f"{service.base}{path}", data=body, headers=signed(secret, body, msg_id), timeout=10
    )


def test_a_signed_signup_becomes_a_contact_once_however_often_it_is_retried(
    service: Service,
) -> None:
    user = unique("user")
    path, secret = cli(service, "webhooks", "create", "--user", user).split("\t")
    body = b'{"email": "signup@example.com", "source": "signup-form"}'
    answers = [deliver(service, path, secret, body, "msg_2b1f") for _ in range(3)]
    assert [a.status_code for a in answers] == [202] * 3
    assert len({a.json()["data"]["job_id"] for a in answers}) == 1
    # The user polls the job with an ordinary key.
    auth = {"Authorization": f"Bearer {create_key(service.env, user)}"}
    final = wait_final(service.base, auth, answers[0].json()["data"]["job_id"])
    assert final["result"]["code"] == 201
    assert final["result"]["data"]["source"] == "signup-form"

    forged = deliver(service, path, "whsec_" + "A" * 44, body, "msg_forged")
    assert forged.status_code == 401

    endpoint_id = path.rsplit("/", 1)[1]
    new_secret = cli(service, "webhooks", "rotate", endpoint_id, "--grace-hours", "1")
    assert (
        deliver(service, path, new_secret, b'{"email": "a@example.com"}', "m2").status_code == 202
    )
    assert deliver(service, path, secret, b'{"email": "b@example.com"}', "m3").status_code == 202
    cli(service, "webhooks", "revoke", endpoint_id)
    time.sleep(0.7)  # the gateway's cache TTL in these tests is 0.5 s
    assert (
        deliver(service, path, new_secret, b'{"email": "c@example.com"}', "m4").status_code == 401
    )
    listing = cli(service, "webhooks", "list", "--user", user)
    assert endpoint_id in listing
    assert secret not in listing
    assert new_secret not in listing


def stored(engine: Engine, user: str, email: str) -> dict[str, object]:
    with engine.connect() as conn:
        row = conn.execute(
            select(contacts).where(contacts.c.user_id == user, contacts.c.email == email)
        ).one()
    return dict(row._mapping)


def test_a_captured_signed_create_replayed_with_upsert_in_the_url_changes_nothing(
    service: Service, engine: Engine
) -> None:
    user, auth = service.new_user()
    email = "kept@example.com"
    kept = service.post(auth, {"email": email, "firstName": "Kept", "company": "Kept Co"})
    assert service.wait_final(auth, kept.json()["data"]["job_id"])["result"]["code"] == 201
    before = stored(engine, user, email)
    path, secret = cli(service, "webhooks", "create", "--user", user).split("\t")

    body = b'{"email": "kept@example.com", "firstName": "Overwritten", "company": null}'
    captured = signed(secret, body, "msg_captured")
    replayed = requests.post(
        f"{service.base}{path}?upsert=1", data=body, headers=captured, timeout=10
    )
    assert replayed.status_code == 400
    assert replayed.json()["error"] == (
        "upsert is fixed by the webhook endpoint; remove ?upsert from the URL"
    )
    # The delivery as signed is what the endpoint does: a create, 409 for a known email.
    original = requests.post(f"{service.base}{path}", data=body, headers=captured, timeout=10)
    assert original.status_code == 202
    assert original.json()["data"]["operation"] == "create"
    final = service.wait_final(auth, original.json()["data"]["job_id"])
    assert final["error"] == {"code": 409, "message": "A contact with this email already exists"}
    assert stored(engine, user, email) == before


def waiting_delivery(service: Service, path: str, secret: str, body: bytes) -> requests.Response:
    """A signed delivery asking to wait for its outcome (which it must not get)."""
    answer = requests.post(
        f"{service.base}{path}",
        data=body,
        headers={**signed(secret, body, unique("msg")), "Prefer": "wait=5"},
        timeout=15,
    )
    assert answer.status_code == 202, answer.text
    assert "Preference-Applied" not in answer.headers
    assert set(answer.json()) == {"data"}
    assert set(answer.json()["data"]) == {"job_id", "status", "operation"}
    return answer


def test_a_delivery_asking_to_wait_gets_the_job_never_the_stored_contact(
    service: Service,
) -> None:
    user, auth = service.new_user()
    path, secret = cli(service, "webhooks", "create", "--user", user).split("\t")
    created = waiting_delivery(service, path, secret, b'{"email": "new@example.com"}')
    assert created.json()["data"]["operation"] == "create"
    assert "cnt_" not in created.text
    assert service.wait_final(auth, created.json()["data"]["job_id"])["result"]["code"] == 201

    email = "private@example.com"
    known = {"email": email, "phone": "+1 555 0100", "customFields": {"plan": "gold"}}
    assert service.wait_final(auth, service.post(auth, known).json()["data"]["job_id"])
    path, secret = cli(service, "webhooks", "create", "--user", user, "--upsert").split("\t")
    endpoint_id = path.rsplit("/", 1)[1]
    listed = cli(service, "webhooks", "list", "--user", user).splitlines()
    assert [line.split("\t")[2] for line in listed] == ["create", "upsert"]
    assert listed[1].split("\t")[:2] == [endpoint_id, user]

    body = b'{"email": "private@example.com", "source": "signup-form"}'
    answer = waiting_delivery(service, path, secret, body)
    assert answer.json()["data"]["operation"] == "upsert"
    # Nothing of the stored contact comes back (the job id is random hex: look for
    # whole values, which it cannot spell).
    assert "+1 555 0100" not in answer.text
    assert "phone" not in answer.text
    assert "gold" not in answer.text
    # The user, with a key, sees the upsert's outcome.
    final = service.wait_final(auth, answer.json()["data"]["job_id"])
    assert final["result"]["code"] == 200
    assert final["result"]["data"]["source"] == "signup-form"
    assert final["result"]["data"]["phone"] == "+1 555 0100"
