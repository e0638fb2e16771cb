"""A key's response mode: the reference's synchronous answers for clients that cannot
send a header, the deployment's default, and the client's own preference first."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from api_gateway.waiting import prefers_async
from contacts_ingest.access.keys import KeyHolder
from contacts_ingest.infrastructure.settings import Settings, parse_respond_mode
from tests.unit.harness import JSON, Keys, make_harness

CONTACT = {"id": "cnt_1", "email": "bob@example.com"}
DUPLICATE = "A contact with this email already exists"
WAITING = {"Authorization": "Bearer cik_waits"}
ASYNC = {"Authorization": "Bearer cik_async"}
DEFAULT = {"Authorization": "Bearer cik_default"}
KEYS = Keys(
    {
        "cik_waits": KeyHolder("key_waits", "alice", respond_wait_seconds=5),
        "cik_async": KeyHolder("key_async", "alice", respond_wait_seconds=0),
        "cik_default": KeyHolder("key_default", "alice"),
    }
)


@pytest.mark.parametrize(
    ("mode", "seconds"),
    [("async", 0), ("wait", 5), ("wait=1", 1), ("wait=10", 10), (" Wait=3 ", 3)],
)
def test_a_mode_reads_as_the_seconds_to_wait(mode: str, seconds: int) -> None:
    assert parse_respond_mode(mode) == seconds


@pytest.mark.parametrize("mode", ["wait=0", "wait=11", "wait=", "sync", "", "wait=1.5"])
def test_a_mode_outside_async_and_wait_1_to_10_is_refused(mode: str) -> None:
    with pytest.raises(ValueError, match="async, wait or wait=N"):
        parse_respond_mode(mode)
    with pytest.raises(ValueError, match="RESPOND_DEFAULT"):
        Settings(respond_default=mode)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("respond-async", True),
        ("respond-async, wait=3", True),
        ("Respond-Async;x=1", True),
        ("wait=3", False),
        ("respond-asynchronously", False),
        (None, False),
    ],
)
def test_respond_async_is_read_from_prefer(header: str | None, expected: bool) -> None:
    assert prefers_async(header) is expected


def _post(outcome: tuple[int, Any], headers: dict[str, str], **kw: Any) -> Any:
    gw = make_harness(outcome=outcome, keys=KEYS, **kw)
    return gw.client.simulate_post(
        "/io/contacts/contacts", json={"email": "bob@example.com"}, headers={**JSON, **headers}
    )


def test_a_wait_mode_key_gets_the_contact_as_the_reference_answers() -> None:
    answer = _post((201, CONTACT), WAITING)
    assert (answer.status_code, answer.json) == (201, {"data": CONTACT})
    # The client asked for nothing: no preference to say was applied.
    assert "Preference-Applied" not in answer.headers
    assert answer.headers["Location"].startswith("/io/contacts/jobs/job_")


def test_a_wait_mode_key_gets_the_duplicate_as_a_409() -> None:
    answer = _post((409, DUPLICATE), WAITING)
    assert (answer.status_code, answer.json) == (409, {"error": DUPLICATE})


def test_respond_async_from_the_client_wins_over_the_keys_mode() -> None:
    answer = _post((201, CONTACT), {**WAITING, "Prefer": "respond-async"})
    assert answer.status_code == 202
    assert answer.json["data"]["status"] == "queued"
    assert answer.headers["Preference-Applied"] == "respond-async"


def test_the_clients_wait_wins_over_an_async_key() -> None:
    answer = _post((201, CONTACT), {**ASYNC, "Prefer": "wait=3"})
    assert (answer.status_code, answer.headers["Preference-Applied"]) == (201, "wait=3")


def test_wait_and_respond_async_together_wait_first_as_rfc_7240_reads_them() -> None:
    answer = _post((201, CONTACT), {**ASYNC, "Prefer": "respond-async, wait=2"})
    assert (answer.status_code, answer.headers["Preference-Applied"]) == (201, "wait=2")


def test_keys_without_a_mode_follow_the_deployments_default() -> None:
    assert _post((201, CONTACT), DEFAULT).status_code == 202
    assert _post((201, CONTACT), DEFAULT, respond_default="wait").status_code == 201
    # A key whose own mode is async stays async whatever the default.
    assert _post((201, CONTACT), ASYNC, respond_default="wait=3").status_code == 202


def test_a_wait_mode_key_past_the_wait_bound_gets_the_202_at_once() -> None:
    answer = _post((201, CONTACT), WAITING, waits_per_user=0)
    assert answer.status_code == 202
    assert "Preference-Applied" not in answer.headers


def test_the_batch_route_waits_only_when_the_request_asks() -> None:
    gw = make_harness(outcome=(200, None), batch_items=[], keys=KEYS)
    body = {"contacts": [{"email": "a@example.com"}]}
    plain = gw.client.simulate_post(
        "/io/contacts/contacts/batch", json=body, headers={**JSON, **WAITING}
    )
    assert plain.status_code == 202
    asked = gw.client.simulate_post(
        "/io/contacts/contacts/batch", json=body, headers={**JSON, **WAITING, "Prefer": "wait=2"}
    )
    assert asked.status_code == 200


class NeverDone:
    """A completion subscription on which no job ever completes."""

    def register(self, job_id: str) -> threading.Event:
        return threading.Event()

    def unregister(self, job_id: str) -> None:
        pass


def test_a_wait_mode_key_whose_job_is_not_final_in_time_gets_the_202() -> None:
    gw = make_harness(
        keys=Keys({"cik_quick": KeyHolder("key_quick", "alice", respond_wait_seconds=1)}),
        completions=NeverDone(),
    )
    answer = gw.client.simulate_post(
        "/io/contacts/contacts",
        json={"email": "bob@example.com"},
        headers={**JSON, "Authorization": "Bearer cik_quick"},
    )
    assert answer.status_code == 202
