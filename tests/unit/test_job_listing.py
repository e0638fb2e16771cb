"""GET /io/contacts/jobs: the caller's jobs newest first, pending and final alike, a page
at a time; and GET /io/contacts/jobs/<id> with Prefer: wait."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.jobs.board import JobBoard
from contacts_ingest.jobs.job import datetime_from_us
from contacts_ingest.jobs.messages import CeleryMessages
from tests.unit.harness import ALICE, BOB, JSON, Harness, make_harness


def _post(gw: Harness, email: str = "a@example.com") -> str:
    answer = gw.client.simulate_post(
        "/io/contacts/contacts", json={"email": email}, headers={**ALICE, **JSON}
    )
    assert answer.status_code == 202
    job_id: str = answer.json["data"]["job_id"]
    return job_id


def _finish(gw: Harness, job_id: str, status: str = "succeeded") -> None:
    """What a worker does: the final row, then the record dropped."""
    record = _board(gw).pending(job_id)
    assert record is not None
    moment = datetime_from_us(int(record["accepted_at_us"]))
    gw.final_rows[job_id] = {
        "job_id": job_id, "user_id": record["user_id"], "operation": "create",
        "status": status, "code": 201 if status == "succeeded" else 400,
        "result": {"code": 201, "data": {"id": "cnt_1"}} if status == "succeeded" else None,
        "error": None if status == "succeeded" else {"code": 400, "message": "bad"},
        "accepted_at": moment, "finished_at": moment,
    }  # fmt: skip
    _board(gw).forget(job_id)


def _board(gw: Harness) -> JobBoard:
    return JobBoard(
        gw.redis, CeleryMessages(Settings(redis_key_prefix="t:")), key_prefix="t:",
        record_ttl_seconds=3600,
    )  # fmt: skip


def _list(gw: Harness, headers: dict[str, str] = ALICE, **params: Any) -> Any:
    answer = gw.client.simulate_get("/io/contacts/jobs", params=params, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json


def test_following_cursors_lists_every_job_once_newest_first_while_jobs_arrive() -> None:
    gw = make_harness()
    posted = [_post(gw, f"a{i}@example.com") for i in range(10)]
    for job_id in posted[::3]:
        _finish(gw, job_id)
    seen: list[str] = []
    page = _list(gw, limit=3)
    while True:
        seen += [job["job_id"] for job in page["data"]]
        # Meanwhile: new jobs arrive, and listed and unlisted ones finish.
        _post(gw, "late@example.com")
        for job_id in posted:
            if job_id not in gw.final_rows:
                _finish(gw, job_id, "failed")
                break
        if page["next_cursor"] is None:
            break
        page = _list(gw, limit=3, cursor=page["next_cursor"])
    assert seen == posted[::-1]


def test_a_page_shows_each_job_as_get_shows_it() -> None:
    gw = make_harness()
    queued, final = _post(gw), _post(gw)
    _finish(gw, final)
    listed = _list(gw)["data"]
    for job in listed:
        one = gw.client.simulate_get(f"/io/contacts/jobs/{job['job_id']}", headers=ALICE)
        assert one.json["data"] == job
    assert [job["job_id"] for job in listed] == [final, queued]
    assert [job["status"] for job in listed] == ["succeeded", "queued"]


def test_status_filters_pending_and_final_jobs() -> None:
    gw = make_harness()
    queued, processing, succeeded, failed = (_post(gw) for _ in range(4))
    _board(gw).start(processing)
    _finish(gw, succeeded)
    _finish(gw, failed, "failed")
    for status, expected in [
        ("queued", [queued]),
        ("processing", [processing]),
        ("succeeded", [succeeded]),
        ("failed", [failed]),
    ]:
        listed = _list(gw, status=status)
        assert [job["job_id"] for job in listed["data"]] == expected, status
        assert listed["next_cursor"] is None


def test_since_keeps_only_jobs_accepted_at_or_after_it() -> None:
    gw = make_harness()
    old = _post(gw)
    _finish(gw, old)
    time.sleep(1.1)  # created_at has whole seconds
    cutoff = gw.client.simulate_get(f"/io/contacts/jobs/{_post(gw)}", headers=ALICE)
    since = cutoff.json["data"]["created_at"]
    listed = [job["job_id"] for job in _list(gw, since=since)["data"]]
    assert old not in listed
    assert cutoff.json["data"]["job_id"] in listed


@pytest.mark.parametrize(
    "since", ["0001-01-01T00:00:00+23:59", "9999-12-31T23:59:59-23:59", "1969-12-31T23:59:59Z"]
)
def test_a_since_at_the_ends_of_time_is_answered(since: str) -> None:
    gw = make_harness()
    _finish(gw, _post(gw))
    answer = gw.client.simulate_get("/io/contacts/jobs", params={"since": since}, headers=ALICE)
    assert answer.status_code == 200
    assert len(answer.json["data"]) == (0 if since.startswith("9999") else 1)


def test_another_users_jobs_never_appear() -> None:
    gw = make_harness()
    _post(gw)
    _finish(gw, _post(gw))
    assert _list(gw, headers=BOB) == {"data": [], "next_cursor": None}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "9" * 5000}, "limit"),
        ({"status": "done"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-06-11T12:00:00"}, "since"),  # no offset: not RFC 3339
        ({"since": "2026-06-11T12:00:00 02:00"}, "since"),  # a + sent unencoded
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "MTIzLmpvYl8x" + "!"}, "cursor"),
        ({"cursor": "OTk5OTk5OTk5OTk5OTk5OTk5OS5qb2JfMQ"}, "cursor"),  # 19 nines: too late
    ],
)
def test_a_bad_parameter_is_a_400_naming_it(params: dict[str, str], field: str) -> None:
    answer = make_harness().client.simulate_get("/io/contacts/jobs", params=params, headers=ALICE)
    assert answer.status_code == 400
    assert answer.json["error"].startswith(field)
    assert answer.json["errors"] == [{"field": field, "message": answer.json["error"]}]


def test_every_bad_parameter_is_named() -> None:
    answer = make_harness().client.simulate_get(
        "/io/contacts/jobs", params={"limit": "0", "status": "x"}, headers=ALICE
    )
    assert [e["field"] for e in answer.json["errors"]] == ["status", "limit"]


def test_a_job_read_with_prefer_wait_answers_once_final() -> None:
    gw = make_harness(outcome=(201, {"id": "cnt_1"}))
    job_id = gw.client.simulate_post(
        "/io/contacts/contacts", json={"email": "a@example.com"}, headers={**ALICE, **JSON}
    ).json["data"]["job_id"]
    answer = gw.client.simulate_get(
        f"/io/contacts/jobs/{job_id}", headers={**ALICE, "Prefer": "wait=3"}
    )
    assert answer.json["data"]["status"] == "succeeded"
    assert answer.headers["Preference-Applied"] == "wait=3"


class NeverDone:
    def register(self, job_id: str) -> threading.Event:
        return threading.Event()

    def unregister(self, job_id: str) -> None:
        pass


def test_a_job_read_with_prefer_wait_answers_after_n_seconds_if_still_pending() -> None:
    gw = make_harness(completions=NeverDone())
    job_id = _post(gw)
    started = time.monotonic()
    answer = gw.client.simulate_get(
        f"/io/contacts/jobs/{job_id}", headers={**ALICE, "Prefer": "wait=1"}
    )
    assert time.monotonic() - started >= 1
    assert answer.json["data"]["status"] == "queued"
    assert answer.headers["Preference-Applied"] == "wait=1"


def test_a_job_read_past_the_wait_bound_answers_at_once_without_the_header() -> None:
    gw = make_harness(completions=NeverDone(), waits_per_user=0)
    answer = gw.client.simulate_get(
        f"/io/contacts/jobs/{_post(gw)}", headers={**ALICE, "Prefer": "wait=5"}
    )
    assert answer.json["data"]["status"] == "queued"
    assert "Preference-Applied" not in answer.headers
