"""A webhook source pushing signed signups through the real gateway and worker."""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime

import pytest
import requests
from standardwebhooks import Webhook

from tests.conftest import unique
from tests.e2e.conftest import CLI, Service, create_key, wait_final

pytestmark = pytest.mark.e2e


def cli(service: Service, *args: str) -> str:
    return subprocess.run(
        [CLI, *args], env=service.env, capture_output=True, text=True, check=True
    ).stdout.strip()


def deliver(
    service: Service, path: str, secret: str, body: bytes, msg_id: str
) -> requests.Response:
    now = datetime.now(UTC)
    return requests.post(
        f"{service.base}{path}",
        data=body,
        headers={
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, now, body.decode()),
        },
        timeout=10,
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
