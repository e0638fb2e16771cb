"""A key in wait mode, through the real gateway and worker, with the platform's own SDK
(``misarmail`` from PyPI, unmodified): it gets the reference API's answers."""

from __future__ import annotations

import subprocess

import pytest
import requests
from misarmail import MisarMailClient
from misarmail.errors import MisarMailError

from tests.conftest import unique
from tests.e2e.conftest import CLI, Service

pytestmark = pytest.mark.e2e

DUPLICATE = "A contact with this email already exists"


def _key(service: Service, user: str, *options: str) -> str:
    done = subprocess.run(
        [CLI, "keys", "create", "--user", user, *options],
        env=service.env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def test_the_sdk_gets_the_contact_and_the_409_from_a_wait_mode_key(service: Service) -> None:
    key = _key(service, unique("user"), "--respond", "wait")
    client = MisarMailClient(key, base_url=f"{service.base}/io/contacts", max_retries=1)
    email = f"{unique('sdk')}@example.com"

    created = client.contacts.create({"email": email, "firstName": "Ada"})
    contact = created["data"]
    assert contact["id"].startswith("cnt_")
    assert (contact["email"], contact["first_name"], contact["status"]) == (
        email,
        "Ada",
        "subscribed",
    )

    with pytest.raises(MisarMailError) as refused:
        client.contacts.create({"email": email.upper()})
    assert refused.value.status == 409
    assert str(refused.value).endswith(DUPLICATE)


def test_an_async_key_still_gets_the_202_and_the_client_may_ask_otherwise(
    service: Service,
) -> None:
    key = _key(service, unique("user"), "--respond", "async")
    auth = {"Authorization": f"Bearer {key}"}
    plain = service.post(auth, {"email": f"{unique('a')}@example.com"})
    assert plain.status_code == 202
    asked = requests.post(
        f"{service.base}/io/contacts/contacts",
        json={"email": f"{unique('a')}@example.com"},
        headers={**auth, "Prefer": "wait=5"},
        timeout=10,
    )
    assert (asked.status_code, asked.headers["Preference-Applied"]) == (201, "wait=5")

    waiting = {"Authorization": f"Bearer {_key(service, unique('user'), '--respond', 'wait=5')}"}
    declined = requests.post(
        f"{service.base}/io/contacts/contacts",
        json={"email": f"{unique('a')}@example.com"},
        headers={**waiting, "Prefer": "respond-async"},
        timeout=10,
    )
    assert (declined.status_code, declined.headers["Preference-Applied"]) == (202, "respond-async")


def test_keys_list_shows_each_keys_mode(service: Service) -> None:
    user = unique("user")
    _key(service, user, "--respond", "wait=3")
    _key(service, user)
    listed = subprocess.run(
        [CLI, "keys", "list", "--user", user],
        env=service.env, capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    modes = sorted(line.split("\t")[4] for line in listed)
    assert modes == ["async (RESPOND_DEFAULT)", "wait=3"]
