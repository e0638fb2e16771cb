"""POST /io/contacts/contacts/batch: up to 1,000 contacts as one job, with its own quota."""

from __future__ import annotations

import pytest

from tests.unit.harness import ALICE, JSON, Harness, make_harness

URL = "/io/contacts/contacts/batch"


@pytest.fixture
def gw() -> Harness:
    return make_harness(limit=1, batch_limit=2)


def test_a_batch_is_one_job_carrying_every_contact(gw: Harness) -> None:
    contacts = [{"email": f"b{i}@example.com"} for i in range(1000)]
    answer = gw.client.simulate_post(
        URL, json={"contacts": contacts}, headers=ALICE, params={"upsert": "1"}
    )
    assert answer.status_code == 202
    [job] = gw.published
    assert job.batch
    assert job.operation == "upsert"
    assert job.body == {"contacts": contacts}
    assert answer.headers["RateLimit-Policy"] == '"batches";q=2;w=60'


def test_bad_contacts_inside_are_not_the_gateways_business(gw: Harness) -> None:
    body = {"contacts": [{"email": "ok@example.com"}, {"email": "nope"}, 7]}
    assert gw.client.simulate_post(URL, json=body, headers=ALICE).status_code == 202


@pytest.mark.parametrize(
    "body", [{"contacts": []}, {"contacts": {}}, {}, [], {"contacts": [{}] * 1001}]
)
def test_a_malformed_batch_is_400(gw: Harness, body: object) -> None:
    answer = gw.client.simulate_post(URL, json=body, headers=ALICE)
    assert answer.status_code == 400
    assert gw.published == []


def test_batches_have_their_own_quota_apart_from_single_writes(gw: Harness) -> None:
    one = {"contacts": [{"email": "a@example.com"}]}
    assert gw.post({"email": "single@example.com"}).status_code == 202  # the 1 single write
    assert gw.post({"email": "single2@example.com"}).status_code == 429
    assert gw.client.simulate_post(URL, json=one, headers=ALICE).status_code == 202
    assert gw.client.simulate_post(URL, json=one, headers=ALICE).status_code == 202
    refused = gw.client.simulate_post(URL, json=one, headers=ALICE)
    assert refused.status_code == 429
    assert refused.json["error"] == "Too many requests \u2014 2 batches per user per 60 seconds"


def test_a_batch_body_may_be_up_to_10_mib(gw: Harness) -> None:
    padding = "x" * 1000
    contacts = [{"email": f"p{i}@example.com", "source": "s", "pad": padding} for i in range(1000)]
    answer = gw.client.simulate_post(URL, json={"contacts": contacts}, headers=ALICE)
    assert answer.status_code == 202  # ~1 MB, far over the single route's 64 KiB
    huge = gw.client.simulate_post(
        URL, body=b'{"contacts": [' + b" " * (10 * 2**20) + b"]}", headers={**ALICE, **JSON}
    )
    assert (huge.status_code, huge.json["error"]) == (413, "Request body must be 10 MiB or smaller")


def test_waiting_for_a_batch_answers_its_counts_and_items() -> None:
    items = [
        {"index": 0, "code": 201, "id": "cnt_1", "email": "a@example.com"},
        {"index": 1, "code": 400, "error": "A valid email is required"},
    ]
    gw = make_harness(outcome=(200, None), batch_items=items)
    answer = gw.client.simulate_post(
        URL,
        json={"contacts": [{"email": "a@example.com"}, {"email": "x"}]},
        headers={**ALICE, "Prefer": "wait=5"},
    )
    assert answer.status_code == 200
    assert answer.json == {
        "data": {"counts": {"created": 1, "updated": 0, "failed": 1}, "items": items}
    }
