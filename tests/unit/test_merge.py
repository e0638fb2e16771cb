"""The merge rules on their own, each at its edge: no database, no Redis."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contacts_ingest.model.contact import parse_contact
from contacts_ingest.model.merge import Changes, changes_of, new_contact, upsert

T = 1_000_000  # an acceptance time, in microseconds


def stored(**columns: Any) -> dict[str, Any]:
    """A contact created at ``T`` by a job that named every column given."""
    changes: Changes = {"email": "a@example.com", **columns}
    return new_contact(changes, T)


def applied(current: dict[str, Any], changes: Changes, at: int) -> dict[str, Any]:
    """``current`` after an upsert of ``changes`` accepted at ``at`` (it must fit the limits)."""
    merge = upsert(current, changes, at)
    assert merge.problem is None
    return {**current, **merge.values}


def test_changes_of_tells_a_null_object_from_null_keys() -> None:
    whole = changes_of(parse_contact({"email": "a@example.com", "socialProfiles": None}))
    keys = changes_of(parse_contact({"email": "a@example.com", "socialProfiles": {"x": None}}))
    custom = changes_of(parse_contact({"email": "a@example.com", "customFields": None}))
    assert whole["social_profiles"] is None
    assert keys["social_profiles"] == {}  # unknown networks are dropped: nothing to change
    assert custom["custom_fields"] is None
    assert "custom_fields" not in whole  # an absent field is no change at all


def test_a_new_contact_leaves_null_keys_out_and_defaults_its_status() -> None:
    contact = new_contact(
        {
            "email": "a@example.com",
            "social_profiles": {"twitter": None, "reddit": "r"},
            "custom_fields": None,
        },
        T,
    )
    assert contact["social_profiles"] == {"reddit": "r"}
    assert contact["custom_fields"] == {}
    assert contact["status"] == "subscribed"
    assert contact["first_name"] is None
    # The null key and the null object are stamped: a late older job cannot bring them back.
    assert contact["field_versions"] == {
        "email": T,
        "social_profiles.twitter": T,
        "social_profiles.reddit": T,
        "custom_fields": T,
    }


def test_a_new_contact_keeps_the_status_it_names() -> None:
    assert stored(status="unsubscribed")["status"] == "unsubscribed"


@pytest.mark.parametrize(("at", "applies"), [(T - 1, False), (T, False), (T + 1, True)])
def test_a_field_changes_only_for_a_job_accepted_strictly_later(at: int, applies: bool) -> None:
    current = stored(company="Old")
    after = applied(current, {"email": "a@example.com", "company": "New"}, at)
    assert after["company"] == ("New" if applies else "Old")
    # Of two jobs accepted at the same microsecond, the one applied first stands.
    assert after["field_versions"]["company"] == (at if applies else T)


@pytest.mark.parametrize(("at", "applies"), [(T, False), (T + 1, True)])
def test_a_key_changes_only_for_a_job_accepted_strictly_later(at: int, applies: bool) -> None:
    current = stored(custom_fields={"plan": "free"})
    after = applied(current, {"custom_fields": {"plan": "pro"}}, at)
    assert after["custom_fields"] == {"plan": "pro" if applies else "free"}


def test_an_upsert_superseded_everywhere_writes_nothing() -> None:
    current = stored(company="New", custom_fields={"k": 1})
    assert upsert(current, {"company": "Old", "custom_fields": {"k": 0}}, T - 5).values == {}


def test_a_null_field_clears_it() -> None:
    after = applied(stored(last_name="Lee"), {"last_name": None}, T + 1)
    assert after["last_name"] is None


def test_keyed_fields_merge_key_by_key_and_a_null_key_removes_only_that_key() -> None:
    current = stored(social_profiles={"linkedin": "L", "twitter": "T"}, custom_fields={"a": 1})
    after = applied(
        current,
        {"social_profiles": {"twitter": None, "reddit": "R"}, "custom_fields": {"b": 2}},
        T + 1,
    )
    assert after["social_profiles"] == {"linkedin": "L", "reddit": "R"}
    assert after["custom_fields"] == {"a": 1, "b": 2}


def test_a_removed_key_is_not_brought_back_by_an_older_job_delivered_late() -> None:
    current = applied(stored(custom_fields={"a": 1}), {"custom_fields": {"a": None}}, T + 2)
    after = applied(current, {"custom_fields": {"a": 7}}, T + 1)
    assert after["custom_fields"] == {}


@pytest.mark.parametrize("field", ["social_profiles", "custom_fields"])
def test_a_null_object_clears_every_key(field: str) -> None:
    current = stored(**{field: {"reddit": "r", "youtube": "y"}})
    merge = upsert(current, {field: None}, T + 1)
    assert merge.values[field] == {}
    # The older key versions are replaced by the object's own.
    assert merge.values["field_versions"] == {"email": T, field: T + 1}


def test_a_null_object_keeps_the_keys_a_later_job_set() -> None:
    current = applied(stored(custom_fields={"a": 1, "b": 2}), {"custom_fields": {"b": 3}}, T + 5)
    after = applied(current, {"custom_fields": None}, T + 3)  # older, delivered late
    assert after["custom_fields"] == {"b": 3}
    assert after["field_versions"]["custom_fields.b"] == T + 5
    assert "custom_fields.a" not in after["field_versions"]


def test_a_key_set_at_the_same_time_as_the_clear_stays() -> None:
    current = applied(stored(custom_fields={"a": 1}), {"custom_fields": {"b": 2}}, T + 3)
    after = applied(current, {"custom_fields": None}, T + 3)
    assert after["custom_fields"] == {"b": 2}


def test_an_older_key_delivered_after_a_clear_stays_cleared() -> None:
    current = applied(stored(custom_fields={"a": 1}), {"custom_fields": None}, T + 5)
    assert applied(current, {"custom_fields": {"z": 1}}, T + 4)["custom_fields"] == {}
    assert applied(current, {"custom_fields": {"z": 1}}, T + 5)["custom_fields"] == {}
    assert applied(current, {"custom_fields": {"z": 1}}, T + 6)["custom_fields"] == {"z": 1}


def test_an_older_clear_delivered_late_changes_nothing_after_a_newer_one() -> None:
    current = applied(stored(custom_fields={"a": 1}), {"custom_fields": None}, T + 5)
    current = applied(current, {"custom_fields": {"b": 1}}, T + 6)
    assert upsert(current, {"custom_fields": None}, T + 4).values == {}


def test_clearing_an_object_already_empty_still_records_its_time() -> None:
    merge = upsert(stored(), {"social_profiles": None}, T + 1)
    assert "social_profiles" not in merge.values  # the value does not change...
    assert merge.values["field_versions"]["social_profiles"] == T + 1  # ...its version does


@pytest.mark.parametrize("suppressed", ["bounced", "complained"])
@pytest.mark.parametrize("requested", ["subscribed", "unsubscribed", "bounced", "complained"])
def test_no_upsert_lifts_a_bounce_or_a_complaint(suppressed: str, requested: str) -> None:
    current = stored(status=suppressed)
    after = applied(current, {"status": requested, "first_name": "Still"}, T + 1)
    assert after["status"] == suppressed
    assert after["first_name"] == "Still"  # the rest of the upsert applies


def test_an_unsubscribed_contact_is_resubscribed_only_when_the_job_names_the_status() -> None:
    current = stored(status="unsubscribed")
    assert applied(current, {"company": "X"}, T + 1)["status"] == "unsubscribed"
    assert applied(current, {"status": "subscribed"}, T + 1)["status"] == "subscribed"


def test_a_bounce_itself_applies_to_a_subscribed_contact() -> None:
    assert applied(stored(), {"status": "bounced"}, T + 1)["status"] == "bounced"


def twenty(prefix: str, count: int) -> dict[str, int]:
    return {f"{prefix}{i}": i for i in range(count)}


@pytest.mark.parametrize(("added", "problem"), [(5, None), (6, "20 keys")])
def test_the_key_limit_holds_on_the_merged_custom_fields(added: int, problem: str | None) -> None:
    current = stored(custom_fields=twenty("a", 15))
    merge = upsert(current, {"custom_fields": twenty("b", added)}, T + 1)
    if problem is None:
        assert merge.problem is None
        assert len(merge.values["custom_fields"]) == 20
    else:
        assert merge.problem == "customFields must have 20 keys or fewer"
        assert merge.values == {}  # nothing of it applies


def test_keys_removed_by_the_same_upsert_make_room() -> None:
    current = stored(custom_fields=twenty("a", 20))
    merge = upsert(current, {"custom_fields": {"a0": None, "new": 1}}, T + 1)
    assert merge.problem is None
    assert len(merge.values["custom_fields"]) == 20


def padded(size: int) -> dict[str, str]:
    """customFields of exactly ``size`` bytes of compact JSON: {"p":"xxx..."}."""
    return {"p": "x" * (size - len('{"p":""}'))}


@pytest.mark.parametrize(("extra", "fits"), [(0, True), (1, False)])
def test_the_size_limit_holds_on_the_merged_custom_fields(extra: int, fits: bool) -> None:
    current = stored(custom_fields=padded(8192 - len(',"q":1')))
    merge = upsert(current, {"custom_fields": {"q": 1 if not extra else 10}}, T + 1)
    assert (merge.problem is None) == fits
    if not fits:
        assert merge.problem == "customFields must be 8192 bytes (8 KB) of JSON or fewer"


# Out of order: versions make the result independent of the order deliveries arrive
# in, for changes that neither touch the status nor meet a limit (those two rules look
# at the stored contact, by design).
_KEYS = st.sampled_from(["a", "b", "c"])
_CHANGE = st.fixed_dictionaries(
    {},
    optional={
        "company": st.one_of(st.none(), st.sampled_from(["X", "Y"])),
        "custom_fields": st.one_of(
            st.none(), st.dictionaries(_KEYS, st.one_of(st.none(), st.integers(0, 3)))
        ),
    },
)


@given(st.lists(_CHANGE, min_size=1, max_size=4))
def test_any_delivery_order_ends_where_acceptance_order_does(changes: list[Changes]) -> None:
    def after(order: tuple[int, ...]) -> dict[str, Any]:
        contact = stored(custom_fields={"a": 0})
        for i in order:
            contact = applied(contact, changes[i], T + 1 + i)
        return contact

    in_acceptance_order = after(tuple(range(len(changes))))
    for order in itertools.permutations(range(len(changes))):
        assert after(order) == in_acceptance_order
