"""Property tests: whatever JSON arrives, the model accepts it or answers a documented message."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contacts_ingest.model.contact import (
    CUSTOM_FIELDS_MAX_KEYS,
    ContactInvalid,
    ContactRequest,
    custom_fields_problem,
    parse_contact,
)
from tests.conftest import REQUEST_FIELDS

NETWORKS = ["linkedin", "twitter", "instagram", "telegram", "whatsapp", "reddit", "youtube"]
TEXT = "(firstName|lastName|phone|company|jobTitle|source|socialProfiles\\.[a-z]+)"
DOCUMENTED = [
    r"A valid email is required",
    rf"{TEXT} must be \d+ characters or fewer",
    rf"{TEXT} must be a string( or null)?",
    rf"{TEXT} must not contain NUL characters",
    r"(socialProfiles|customFields) must be an object",
    r"status must be subscribed, unsubscribed, bounced, or complained",
    r"customFields must have 20 keys or fewer",
    r"customFields must be 8192 bytes \(8 KB\) of JSON or fewer",
    r"customFields must not nest more than 32 levels deep",
    r"customFields must not contain NUL characters",
    r"customFields must hold only finite numbers",
    r"workspaceId must be a UUID",
    r"Request body must be a JSON object",
]
DOCUMENTED_RE = re.compile("^(" + "|".join(DOCUMENTED) + ")$")

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=120)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
field_values = (
    json_values
    | st.text(min_size=95, max_size=160)
    | st.sampled_from(["subscribed", "bounced", "Subscribed", "bob@example.com", "a@b"])
    | st.dictionaries(st.sampled_from([*NETWORKS, "myspace"]), st.none() | st.text(max_size=520))
    | st.uuids().map(str)
)
bodies = st.dictionaries(st.sampled_from(REQUEST_FIELDS), field_values) | json_values


def check(body: Any) -> None:
    try:
        contact = parse_contact(body)
    except ContactInvalid as invalid:
        assert invalid.errors, "an invalid body must name at least one field"
        assert invalid.message == invalid.errors[0]["message"]
        for error in invalid.errors:
            assert DOCUMENTED_RE.match(error["message"]), error
        return
    assert isinstance(contact, ContactRequest)
    assert len(contact.email) <= 254
    fields = {k: v for k, v in (contact.custom_fields or {}).items() if v is not None}
    assert len(fields) <= CUSTOM_FIELDS_MAX_KEYS
    assert custom_fields_problem(fields) is None
    for text in (contact.first_name, contact.last_name, contact.job_title, contact.source):
        assert text is None or len(text) <= 100


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
def test_any_body_is_accepted_or_answered_with_documented_messages(body: Any) -> None:
    check(body)


@settings(max_examples=200)
@given(
    st.dictionaries(st.sampled_from(REQUEST_FIELDS), json_values).map(
        lambda b: {"email": "a@example.com", **b}
    )
)
def test_any_field_value_beside_a_valid_email_is_handled(body: dict[str, Any]) -> None:
    check(body)


@settings(max_examples=100)
@given(st.dictionaries(st.text(max_size=10), st.text(max_size=900), max_size=30))
def test_custom_fields_limits_are_exact(fields: dict[str, str]) -> None:
    body = {"email": "a@example.com", "customFields": fields}
    problem = custom_fields_problem(fields)
    nul = any("\x00" in k or "\x00" in v for k, v in fields.items())
    try:
        parse_contact(body)
        assert problem is None
        assert not nul
    except ContactInvalid as invalid:
        assert problem is not None or nul
        assert invalid.errors[0]["field"] == "customFields"
    if len(fields) > CUSTOM_FIELDS_MAX_KEYS:
        assert problem is not None
