"""Every rule of the API reference, at its boundary, with its exact message."""

from __future__ import annotations

from typing import Any

import pytest

from contacts_ingest.model.contact import (
    ContactInvalid,
    ContactRequest,
    custom_fields_problem,
    parse_contact,
)
from contacts_ingest.model.documents import FieldError

EMAIL = "bob@example.com"


def errors_of(body: Any) -> list[FieldError]:
    with pytest.raises(ContactInvalid) as caught:
        parse_contact(body)
    return caught.value.errors


def accepted(body: dict[str, Any]) -> ContactRequest:
    return parse_contact({"email": EMAIL, **body})


@pytest.mark.parametrize(
    ("field", "limit"),
    [
        ("firstName", 100),
        ("lastName", 100),
        ("jobTitle", 100),
        ("source", 100),
        ("phone", 50),
        ("company", 150),
    ],
)
def test_text_fields_accept_their_limit_and_reject_one_more(field: str, limit: int) -> None:
    assert accepted({field: "x" * limit})
    assert errors_of({"email": EMAIL, field: "x" * (limit + 1)}) == [
        {"field": field, "message": f"{field} must be {limit} characters or fewer"}
    ]


def test_limits_count_characters_not_bytes() -> None:
    assert accepted({"firstName": "é" * 100}).first_name == "é" * 100


@pytest.mark.parametrize(
    "email",
    [None, "", "not-an-email", "a@", "@example.com", 42, ["bob@example.com"], {"a": 1}],
)
def test_invalid_or_missing_email_is_rejected(email: Any) -> None:
    assert errors_of({"email": email}) == [
        {"field": "email", "message": "A valid email is required"}
    ]


def test_missing_email_is_rejected() -> None:
    assert errors_of({"firstName": "Bob"})[0]["message"] == "A valid email is required"


def test_email_of_254_characters_is_accepted_and_255_rejected() -> None:
    def address(last_label: int) -> str:
        return "a" * 64 + "@" + "d" * 63 + "." + "d" * 63 + "." + "d" * last_label + ".com"

    assert len(address(57)) == 254
    assert parse_contact({"email": address(57)}).email == address(57)
    assert len(address(58)) == 255
    assert errors_of({"email": address(58)})[0]["message"] == "A valid email is required"


def test_email_is_normalized_and_keyed_case_folded() -> None:
    contact = parse_contact({"email": "Bob.Smith@EXAMPLE.com"})
    assert contact.email == "Bob.Smith@example.com"
    assert contact.email_key == "bob.smith@example.com"


@pytest.mark.parametrize("status", ["subscribed", "unsubscribed", "bounced", "complained"])
def test_each_documented_status_is_accepted(status: str) -> None:
    assert accepted({"status": status}).status == status


@pytest.mark.parametrize("status", ["Subscribed", "active", "", None, 1])
def test_other_statuses_are_rejected(status: Any) -> None:
    assert errors_of({"email": EMAIL, "status": status}) == [
        {
            "field": "status",
            "message": "status must be subscribed, unsubscribed, bounced, or complained",
        }
    ]


def test_status_defaults_to_subscribed_but_is_not_reported_as_a_change() -> None:
    contact = accepted({})
    assert contact.status == "subscribed"
    assert "status" not in contact.changes()


def test_social_profiles_keep_allowed_networks_and_drop_unknown_keys() -> None:
    contact = accepted(
        {"socialProfiles": {"linkedin": "https://linkedin.com/in/bob", "myspace": "bob"}}
    )
    assert contact.changes()["social_profiles"] == {"linkedin": "https://linkedin.com/in/bob"}


def test_social_profile_values_may_be_null_to_remove_them() -> None:
    assert accepted({"socialProfiles": {"twitter": None}}).changes()["social_profiles"] == {
        "twitter": None
    }


def test_social_profile_value_of_500_characters_is_accepted_and_501_rejected() -> None:
    assert accepted({"socialProfiles": {"youtube": "y" * 500}})
    assert errors_of({"email": EMAIL, "socialProfiles": {"youtube": "y" * 501}}) == [
        {
            "field": "socialProfiles.youtube",
            "message": "socialProfiles.youtube must be 500 characters or fewer",
        }
    ]


def test_social_profiles_must_be_an_object_of_strings() -> None:
    assert errors_of({"email": EMAIL, "socialProfiles": ["x"]})[0]["message"] == (
        "socialProfiles must be an object"
    )
    assert errors_of({"email": EMAIL, "socialProfiles": {"reddit": 5}})[0]["message"] == (
        "socialProfiles.reddit must be a string or null"
    )


def test_custom_fields_accept_20_keys_and_reject_21() -> None:
    assert accepted({"customFields": {f"k{i}": i for i in range(20)}})
    assert errors_of({"email": EMAIL, "customFields": {f"k{i}": i for i in range(21)}}) == [
        {"field": "customFields", "message": "customFields must have 20 keys or fewer"}
    ]


def test_custom_fields_accept_8192_bytes_of_compact_json_and_reject_8193() -> None:
    # {"k":"<value>"} is 8 bytes of framing around the value.
    assert accepted({"customFields": {"k": "v" * 8184}})
    assert errors_of({"email": EMAIL, "customFields": {"k": "v" * 8185}}) == [
        {
            "field": "customFields",
            "message": "customFields must be 8192 bytes (8 KB) of JSON or fewer",
        }
    ]


def test_custom_fields_size_counts_utf8_bytes() -> None:
    assert custom_fields_problem({"k": "é" * 4092}) is None  # 8 + 8184 bytes
    assert custom_fields_problem({"k": "é" * 4093}) is not None


def test_custom_fields_hold_arbitrary_json_values() -> None:
    fields = {"plan": "pro", "seats": 3, "tags": ["a", "b"], "meta": {"x": None}, "ok": True}
    assert accepted({"customFields": fields}).custom_fields == fields


def test_custom_fields_must_be_an_object() -> None:
    assert errors_of({"email": EMAIL, "customFields": [1, 2]})[0]["message"] == (
        "customFields must be an object"
    )


def test_workspace_id_must_be_a_uuid_and_is_stored_canonical() -> None:
    contact = accepted({"workspaceId": "6F9619FF-8B86-D011-B42D-00C04FC964FF"})
    assert contact.workspace_id == "6f9619ff-8b86-d011-b42d-00c04fc964ff"
    assert errors_of({"email": EMAIL, "workspaceId": "ws-1"}) == [
        {"field": "workspaceId", "message": "workspaceId must be a UUID"}
    ]
    assert errors_of({"email": EMAIL, "workspaceId": 7})[0]["field"] == "workspaceId"


@pytest.mark.parametrize("value", [5, True, ["Bob"], {"a": "b"}])
def test_text_fields_must_be_strings(value: Any) -> None:
    assert errors_of({"email": EMAIL, "firstName": value}) == [
        {"field": "firstName", "message": "firstName must be a string"}
    ]


def test_nul_characters_are_refused_because_postgresql_cannot_store_them() -> None:
    assert errors_of({"email": EMAIL, "company": "Acme\x00"}) == [
        {"field": "company", "message": "company must not contain NUL characters"}
    ]
    assert errors_of({"email": EMAIL, "customFields": {"a\x00": 1}})[0]["field"] == ("customFields")


def test_unknown_top_level_fields_are_ignored() -> None:
    assert accepted({"favouriteColour": "green", "lead_score": 99}).changes() == {"email": EMAIL}


def test_every_failing_field_is_listed_in_field_order() -> None:
    errors = errors_of(
        {
            "workspaceId": "nope",
            "status": "gone",
            "email": "nope",
            "firstName": "x" * 101,
            "company": "c" * 151,
        }
    )
    assert [e["field"] for e in errors] == [
        "email",
        "firstName",
        "company",
        "status",
        "workspaceId",
    ]


@pytest.mark.parametrize("body", [[], "text", 3, None])
def test_a_body_that_is_not_an_object_is_rejected(body: Any) -> None:
    assert errors_of(body) == [{"field": "body", "message": "Request body must be a JSON object"}]


def test_changes_name_only_the_fields_present() -> None:
    contact = accepted({"lastName": "Smith", "phone": None})
    assert contact.changes() == {"email": EMAIL, "last_name": "Smith", "phone": None}


def test_custom_fields_nest_32_levels_deep_and_no_deeper() -> None:
    def nested(levels: int) -> dict[str, Any]:
        value: Any = "leaf"  # held by the innermost level, not one of its own
        for _ in range(levels - 1):  # the object itself is the first level
            value = [value]
        return {"k": value}

    assert accepted({"customFields": nested(32)})
    assert errors_of({"email": EMAIL, "customFields": nested(33)}) == [
        {"field": "customFields", "message": "customFields must not nest more than 32 levels deep"}
    ]
    # Far deeper than Python's recursion limit: still a clean 400.
    assert errors_of({"email": EMAIL, "customFields": nested(5000)})[0]["field"] == "customFields"


def test_custom_fields_levels_are_counted_as_a_reader_counts_nested_objects() -> None:
    def objects(count: int) -> dict[str, Any]:
        value: dict[str, Any] = {"name": "innermost"}
        for _ in range(count - 1):
            value = {"inner": value}
        return value  # ``count`` objects, customFields itself the outermost

    assert accepted({"customFields": objects(32)})
    assert accepted({"customFields": {"list": [[1, 2], [3]]}})  # three levels
    assert errors_of({"email": EMAIL, "customFields": objects(33)}) == [
        {"field": "customFields", "message": "customFields must not nest more than 32 levels deep"}
    ]


def test_an_email_whose_normalized_form_outgrows_254_characters_is_rejected() -> None:
    # IDNA maps the ligature U+FB01 to "fi": 249 characters become 255.
    address = (
        "a" * 64 + "@" + "\ufb01" * 6 + "." + "d" * 63 + "." + "d" * 63 + "." + "d" * 47 + ".com"
    )
    assert len(address) <= 254
    assert errors_of({"email": address})[0]["message"] == "A valid email is required"


@pytest.mark.parametrize("number", [float("nan"), float("inf")])
def test_custom_fields_refuse_non_finite_numbers(number: float) -> None:
    assert errors_of({"email": EMAIL, "customFields": {"n": number}}) == [
        {"field": "customFields", "message": "customFields must hold only finite numbers"}
    ]


def test_an_email_whose_case_folded_key_outgrows_254_characters_is_rejected() -> None:
    # Valid and 137 characters long, but "ΐ" case-folds to three characters: the key
    # contacts are unique on would be 265, more than the database column holds.
    email = "\u0390" * 64 + "@" + "a" * 60 + ".example.com"
    assert (len(email), len(email.casefold())) == (137, 265)
    assert errors_of({"email": email}) == [
        {"field": "email", "message": "A valid email is required"}
    ]
    fits = "\u0390" * 60 + "@" + "a" * 50 + ".example.com"  # folds to 243
    assert accepted({"email": fits}).email_key == fits.casefold()
