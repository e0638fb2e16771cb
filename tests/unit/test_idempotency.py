"""Idempotency-Key on POST /io/contacts/contacts (IETF httpapi idempotency-key draft)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.unit.harness import ALICE, BOB, JSON, Harness, make_harness

BODY = {"email": "idem@example.com", "firstName": "Ida"}


@pytest.fixture
def gw() -> Harness:
    return make_harness(limit=3)


def keyed(key: str, who: dict[str, str] = ALICE) -> dict[str, str]:
    return {**who, "Idempotency-Key": key}


def test_a_repeat_returns_the_original_job_and_enqueues_nothing(gw: Harness) -> None:
    first = gw.post(BODY, headers=keyed("k-1"))
    again = gw.post(BODY, headers=keyed("k-1"))
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json == first.json
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert len(gw.published) == 1


def test_a_repeat_does_not_consume_quota(gw: Harness) -> None:
    for _ in range(10):
        assert gw.post(BODY, headers=keyed("k-quota")).status_code == 202
    # The limit is 3: one write used, two left.
    assert gw.post({"email": "a@example.com"}).status_code == 202
    assert gw.post({"email": "b@example.com"}).status_code == 202
    assert gw.post({"email": "c@example.com"}).status_code == 429


def test_the_same_body_serialised_differently_is_still_a_repeat(gw: Harness) -> None:
    first = gw.post(BODY, headers=keyed("k-order"))
    reordered = b'{ "firstName": "Ida",\n  "email": "idem@example.com" }'
    again = gw.client.simulate_post(
        "/io/contacts/contacts", body=reordered, headers={**keyed("k-order"), **JSON}
    )
    assert again.json == first.json


def test_the_same_key_with_a_different_body_is_422(gw: Harness) -> None:
    gw.post(BODY, headers=keyed("k-2"))
    other = gw.post({**BODY, "firstName": "Other"}, headers=keyed("k-2"))
    assert other.status_code == 422
    assert other.json == {
        "error": "This Idempotency-Key was already used for a different request",
        "type": "/problems/idempotency-key-reused",
    }
    upsert = gw.post(BODY, headers=keyed("k-2"), params={"upsert": "1"})
    assert upsert.status_code == 422  # same body, different operation
    assert len(gw.published) == 1


def test_keys_are_scoped_per_user(gw: Harness) -> None:
    alices = gw.post(BODY, headers=keyed("shared"))
    bobs = gw.post(BODY, headers=keyed("shared", BOB))
    assert bobs.status_code == 202
    assert bobs.json["data"]["job_id"] != alices.json["data"]["job_id"]
    assert len(gw.published) == 2


def test_racing_repeats_admit_one_job_and_the_rest_replay_it(gw: Harness) -> None:
    # Admission records the key and queues the job in one step: a repeat can never find
    # its first request half-accepted.
    barrier = threading.Barrier(8)
    answers: list[Any] = []

    def racer() -> None:
        barrier.wait()
        answers.append(gw.post(BODY, headers=keyed("k-3")))

    threads = [threading.Thread(target=racer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [202] * 8
    assert len({a.json["data"]["job_id"] for a in answers}) == 1
    assert sorted(a.headers.get("Idempotent-Replayed", "") for a in answers) == [""] + ["true"] * 7
    assert len(gw.published) == 1


def test_a_503_leaves_the_key_unused_for_the_retry(gw: Harness) -> None:
    assert gw.redis_server is not None
    gw.redis_server.connected = False
    assert gw.post(BODY, headers=keyed("k-4")).status_code == 503
    gw.redis_server.connected = True
    retry = gw.post(BODY, headers=keyed("k-4"))
    assert retry.status_code == 202
    [job] = gw.published
    assert retry.json["data"]["job_id"] == job.job_id


@pytest.mark.parametrize("bad", ["", "a" * 256, "caf\u00e9", "tab\there"])
def test_a_malformed_key_is_400(gw: Harness, bad: str) -> None:
    answer = gw.client.simulate_post(
        "/io/contacts/contacts",
        body=b'{"email": "x@example.com"}',
        headers={**ALICE, **JSON, "Idempotency-Key": bad},
    )
    assert answer.status_code == 400
    assert answer.json["error"] == "Idempotency-Key must be 1 to 255 printable ASCII characters"
    assert gw.published == []


def test_a_quoted_key_is_the_same_key(gw: Harness) -> None:
    first = gw.post(BODY, headers=keyed('"quoted-key"'))
    assert gw.post(BODY, headers=keyed("quoted-key")).json == first.json


def test_an_invalid_body_with_a_new_key_is_400_and_reserves_nothing(gw: Harness) -> None:
    assert gw.post({"email": "nope"}, headers=keyed("k-5")).status_code == 400
    assert gw.post(BODY, headers=keyed("k-5")).status_code == 202


def test_a_replay_carries_the_rate_limit_headers_and_counts_nothing(gw: Harness) -> None:
    first = gw.post(BODY, headers=keyed("k-headers"))
    again = gw.post(BODY, headers=keyed("k-headers"))
    assert first.headers["RateLimit"].startswith('"writes";r=2;')
    assert again.headers["RateLimit-Policy"] == '"writes";q=3;w=60'
    assert again.headers["RateLimit"].startswith('"writes";r=2;')


def test_a_reused_key_is_counted_like_any_refused_write(gw: Harness) -> None:
    gw.post(BODY, headers=keyed("k-count"))
    reused = gw.post({**BODY, "firstName": "Other"}, headers=keyed("k-count"))
    assert reused.status_code == 422
    assert reused.headers["RateLimit-Policy"] == '"writes";q=3;w=60'
    assert reused.headers["RateLimit"].startswith('"writes";r=1;')
    assert gw.post({"email": "last@example.com"}).status_code == 202
    # The quota of 3 is used up: the next reuse is refused by the limit itself.
    over = gw.post({**BODY, "firstName": "Again"}, headers=keyed("k-count"))
    assert over.status_code == 429
