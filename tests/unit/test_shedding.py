"""Load shedding by queue length, in-process (fakeredis runs the real admission script).

Shedding on Redis's memory needs a real Redis over its maxmemory:
tests/faults/test_shedding.py.
"""

from __future__ import annotations

from tests.unit.harness import ALICE, JSON, make_harness

SHED = {"error": "Service temporarily unavailable, try again"}


def test_a_full_queue_sheds_new_jobs_with_503_and_retry_after_recording_nothing() -> None:
    gw = make_harness(max_queued=2)
    assert [gw.post({"email": f"a{i}@example.com"}).status_code for i in range(2)] == [202, 202]
    keys_before = set(gw.redis.keys("*"))
    shed = gw.post({"email": "late@example.com"})
    assert (shed.status_code, shed.json) == (503, SHED)
    assert shed.headers["Retry-After"] == "5"
    assert len(gw.published) == 2
    assert set(gw.redis.keys("*")) == keys_before  # no record, no count, no key


def test_a_shed_request_does_not_count_against_the_rate_limit() -> None:
    gw = make_harness(max_queued=1, limit=3)
    assert gw.post({"email": "a@example.com"}).headers["RateLimit"].startswith('"writes";r=2;')
    for _ in range(5):
        assert gw.post({"email": "b@example.com"}).status_code == 503
    gw.redis.delete(gw.queue_key)  # a worker took the job
    again = gw.post({"email": "b@example.com"})
    assert again.status_code == 202
    assert again.headers["RateLimit"].startswith('"writes";r=1;')


def test_a_replay_is_answered_while_new_jobs_are_shed() -> None:
    gw = make_harness(max_queued=1)
    keyed = {**ALICE, **JSON, "Idempotency-Key": "k-1"}
    first = gw.post({"email": "a@example.com"}, headers=keyed)
    assert gw.post({"email": "b@example.com"}).status_code == 503
    replay = gw.post({"email": "a@example.com"}, headers=keyed)
    assert replay.status_code == 202
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json == first.json


def test_a_request_that_breaks_a_rule_is_told_so_even_while_shedding() -> None:
    gw = make_harness(max_queued=1)
    gw.post({"email": "a@example.com"})
    refused = gw.post({"email": "not an address"})
    assert (refused.status_code, refused.json["error"]) == (400, "A valid email is required")


def test_shed_requests_are_counted_by_reason() -> None:
    gw = make_harness(max_queued=1)
    gw.post({"email": "a@example.com"})

    def shed_count() -> float:
        for line in gw.client.simulate_get("/metrics").text.splitlines():
            if line.startswith('contacts_gateway_shed_total{reason="queue_full"}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = shed_count()
    for _ in range(3):
        gw.post({"email": "b@example.com"})
    assert shed_count() - before == 3


def test_no_limit_when_max_queued_jobs_is_0() -> None:
    gw = make_harness(max_queued=0)
    assert {gw.post({"email": f"a{i}@example.com"}).status_code for i in range(20)} == {202}
