"""Reading RFC 7240's ``Prefer: wait=N``."""

from __future__ import annotations

import pytest

from api_gateway.waiting import preferred_wait
from tests.unit.harness import make_harness


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("wait=5", 5),
        ("respond-async, wait=3", 3),
        ("WAIT = 2", 2),
        ('wait="4"', 4),
        ("wait=100", 10),  # at most 10 s
        ("wait=0", 0),
        ("handling=lenient; wait=1", 1),
        (None, None),
        ("", None),
        ("respond-async", None),
        ("await=5", None),
        ("wait=-1", None),
        ("wait=soon", None),
    ],
)
def test_the_wait_preference_is_read_and_capped(header: str | None, seconds: int | None) -> None:
    assert preferred_wait(header) == seconds


def test_a_final_outcome_is_answered_like_the_synchronous_api() -> None:
    gw = make_harness(outcome=(409, "A contact with this email already exists"))
    answer = gw.post({"email": "dup@example.com"}, headers={"Prefer": "wait=3"})
    assert (answer.status_code, answer.json) == (
        409,
        {"error": "A contact with this email already exists"},
    )
    assert answer.headers["Preference-Applied"] == "wait=3"


def test_without_the_preference_nothing_waits() -> None:
    gw = make_harness(outcome=(201, {"email": "x@example.com"}))
    assert gw.post({"email": "x@example.com"}).status_code == 202
