"""Signed webhook deliveries (Standard Webhooks) on POST /io/contacts/webhooks/<endpoint>."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from falcon.testing import Result

from tests.unit.harness import (
    JSON,
    UPSERT_WEBHOOK_ENDPOINT,
    WEBHOOK_ENDPOINT,
    Harness,
    make_harness,
    signed,
)

URL = f"/io/contacts/webhooks/{WEBHOOK_ENDPOINT}"
BODY = b'{"email": "hook@example.com", "firstName": "Hook"}'


@pytest.fixture
def gw() -> Harness:
    return make_harness()


def deliver(gw: Harness, body: bytes, headers: dict[str, str], url: str = URL) -> Result:
    return gw.client.simulate_post(url, body=body, headers=headers)


def test_a_signed_delivery_is_enqueued_for_the_endpoints_user(gw: Harness) -> None:
    answer = gw.client.simulate_post(URL, body=BODY, headers=signed(BODY))
    assert answer.status_code == 202
    [job] = gw.published
    assert (job.user_id, job.body) == ("alice", {"email": "hook@example.com", "firstName": "Hook"})
    assert answer.headers["Location"] == f"/io/contacts/jobs/{job.job_id}"


def test_a_retried_delivery_with_the_same_webhook_id_makes_no_second_job(gw: Harness) -> None:
    first = gw.client.simulate_post(URL, body=BODY, headers=signed(BODY, msg_id="msg_r"))
    retry = gw.client.simulate_post(URL, body=BODY, headers=signed(BODY, msg_id="msg_r"))
    assert retry.json == first.json
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert len(gw.published) == 1


def test_a_webhook_id_and_a_client_key_with_the_same_text_do_not_collide(gw: Harness) -> None:
    gw.client.simulate_post(URL, body=BODY, headers=signed(BODY, msg_id="same"))
    other = gw.post({"email": "other@example.com"}, headers={"Idempotency-Key": "same"})
    assert other.status_code == 202
    assert len(gw.published) == 2


OTHER_SECRET = "whsec_" + base64.b64encode(b"w" * 32).decode()

# Built when the test runs, not at collection: timestamps must be relative to then.
BAD_HEADERS: dict[str, Callable[[], dict[str, str]]] = {
    "wrong-secret": lambda: signed(BODY, secret=OTHER_SECRET),
    "stale": lambda: signed(BODY, at=datetime.now(UTC) - timedelta(minutes=6)),
    "future": lambda: signed(BODY, at=datetime.now(UTC) + timedelta(minutes=6)),
    "other-body": lambda: signed(b'{"email": "other@example.com"}'),
    "unsigned": lambda: {"Content-Type": "application/json"},
    "garbage": lambda: {**signed(BODY), "webhook-signature": "v1,!!!not-base64"},
    "malformed": lambda: {**signed(BODY), "webhook-signature": "nonsense"},
    "bad-timestamp": lambda: {**signed(BODY), "webhook-timestamp": "soon"},
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_bad_or_stale_signatures_are_401_and_enqueue_nothing(gw: Harness, case: str) -> None:
    answer = gw.client.simulate_post(URL, body=BODY, headers=BAD_HEADERS[case]())
    assert answer.status_code == 401
    assert answer.json == {"error": "A valid webhook signature is required"}
    assert gw.published == []


def test_an_unknown_endpoint_is_401(gw: Harness) -> None:
    answer = gw.client.simulate_post(
        "/io/contacts/webhooks/whk_nobody", body=BODY, headers=signed(BODY)
    )
    assert answer.status_code == 401


def test_several_signatures_verify_when_one_matches(gw: Harness) -> None:
    headers = signed(BODY)
    headers["webhook-signature"] = "v1,AAAA " + headers["webhook-signature"]
    assert gw.client.simulate_post(URL, body=BODY, headers=headers).status_code == 202


def test_a_signed_but_invalid_contact_is_a_400_like_any_other(gw: Harness) -> None:
    body = b'{"email": "nope"}'
    answer = gw.client.simulate_post(URL, body=body, headers=signed(body))
    assert answer.status_code == 400
    assert answer.json["error"] == "A valid email is required"


UPSERT_URL = f"/io/contacts/webhooks/{UPSERT_WEBHOOK_ENDPOINT}"


def test_the_operation_is_the_one_the_endpoint_was_created_with(gw: Harness) -> None:
    created = deliver(gw, BODY, signed(BODY, msg_id="msg_c"))
    upserted = deliver(gw, BODY, signed(BODY, msg_id="msg_u"), url=UPSERT_URL)
    operations = [answer.json["data"]["operation"] for answer in (created, upserted)]
    assert operations == ["create", "upsert"]
    assert [job.operation for job in gw.published] == ["create", "upsert"]


@pytest.mark.parametrize("url", [URL, UPSERT_URL])
@pytest.mark.parametrize("query", ["upsert=1", "upsert=0", "upsert=true", "upsert=", "upsert"])
def test_upsert_in_a_webhook_url_is_a_400_and_enqueues_nothing(
    gw: Harness, url: str, query: str
) -> None:
    # A signed create captured and replayed with ?upsert=1: the signature does not cover
    # the URL, so the URL must not choose what the delivery does.
    headers = signed(BODY, msg_id="msg_captured")
    answer = gw.client.simulate_post(url, body=BODY, headers=headers, query_string=query)
    assert answer.status_code == 400
    message = "upsert is fixed by the webhook endpoint; remove ?upsert from the URL"
    assert answer.json == {"error": message, "errors": [{"field": "upsert", "message": message}]}
    assert gw.published == []
    # The delivery itself, as signed, is still accepted once (its webhook-id not used up).
    assert gw.client.simulate_post(url, body=BODY, headers=headers).status_code == 202
    assert len(gw.published) == 1


STORED = {"id": "cnt_1", "email": "hook@example.com", "phone": "+1 555 0100"}


@pytest.mark.parametrize("url", [URL, UPSERT_URL])
def test_prefer_wait_is_not_applied_to_webhook_deliveries(url: str) -> None:
    # A worker that is instant: a keyed request asking to wait would get STORED back.
    gw = make_harness(outcome=(200, STORED))
    headers = {**signed(BODY, msg_id="msg_w"), "Prefer": "wait=5"}
    first = gw.client.simulate_post(url, body=BODY, headers=headers)
    retried = gw.client.simulate_post(url, body=BODY, headers=headers)
    for answer in (first, retried):
        assert answer.status_code == 202
        assert "Preference-Applied" not in answer.headers
        assert set(answer.json) == {"data"}
        assert set(answer.json["data"]) == {"job_id", "status", "operation"}
        assert "+1 555 0100" not in answer.text
    assert retried.headers["Idempotent-Replayed"] == "true"
    keyed = gw.post({"email": "hook@example.com"}, headers={**JSON, "Prefer": "wait=5"})
    assert (keyed.status_code, keyed.json["data"]) == (200, STORED)
