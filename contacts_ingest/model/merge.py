"""What a create or an upsert does to a contact: the product's merge rules, without I/O.

A contact here is a plain mapping of its stored columns (``status``, ``social_profiles``,
``custom_fields``, ``field_versions``, ...). ``field_versions`` maps a field (or
``"social_profiles.<key>"``, ``"custom_fields.<key>"``) to the acceptance time, in
microseconds, of the job that last set it; a keyed field's own entry is the time its
whole object was last cleared. A change applies only where every version it meets is
strictly older than its job, so a late delivery never undoes newer data, and of two
jobs accepted at the same microsecond the one applied first stands.

The ingestion service (``ingest.py``) applies these rules in memory, one change after
another in acceptance order, and writes the results set-based.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from contacts_ingest.model.contact import ContactRequest, custom_fields_problem

# Fields holding an object that upserts merge key by key.
KEYED_FIELDS = ("social_profiles", "custom_fields")

# A bounce or a complaint is a fact about the address, not a preference: no upsert
# moves a contact out of these (deliverability and anti-spam law depend on it).
SUPPRESSED_STATUSES = frozenset({"bounced", "complained"})

# The status a new contact gets when its job names none.
DEFAULT_STATUS: str = ContactRequest.model_fields["status"].default

# The columns a job can set (``email`` included), each empty on a new contact.
CONTACT_COLUMNS = (
    *("email", "first_name", "last_name", "phone", "company", "job_title"),
    *("social_profiles", "status", "custom_fields", "source", "workspace_id"),
)

_EMPTY: dict[str, Any] = dict.fromkeys(CONTACT_COLUMNS)

Changes = dict[str, Any]
"""Stored column -> value, for every field a job names. A keyed field maps its keys to
values (None removes that key), or is None itself (the whole object set to null: clear it)."""


def changes_of(request: ContactRequest) -> Changes:
    """The changes ``request`` asks for; ``"socialProfiles": null`` and
    ``"customFields": null`` come back as None (clear the whole object)."""
    changes = request.changes()
    for field in KEYED_FIELDS:
        if field in changes and getattr(request, field) is None:
            changes[field] = None
    return changes


def new_contact(changes: Changes, accepted_at_us: int) -> dict[str, Any]:
    """Every column of ``CONTACT_COLUMNS`` of a contact that ``changes`` creates, and its
    ``field_versions``: unnamed fields empty, null keys left out, status defaulted."""
    contact = dict(_EMPTY)
    contact.update(changes)
    for field in KEYED_FIELDS:
        value = changes.get(field)
        contact[field] = {k: v for k, v in value.items() if v is not None} if value else {}
    if contact["status"] is None:
        contact["status"] = DEFAULT_STATUS
    contact["field_versions"] = _versions_of(changes, accepted_at_us)
    return contact


def _versions_of(changes: Changes, accepted_at_us: int) -> dict[str, int]:
    """Which fields (and keys of the keyed fields) ``changes`` sets, stamped with its time.

    A null key is stamped too: a late older job must not bring it back.
    """
    versions: dict[str, int] = {}
    for field, value in changes.items():
        if field in KEYED_FIELDS and value is not None:
            versions.update({f"{field}.{key}": accepted_at_us for key in value})
        else:
            versions[field] = accepted_at_us
    return versions


def suppression_safe(current_status: str, changes: Changes) -> Changes:
    """``changes`` without a status change that would lift a suppression.

    An unsubscribed contact is re-subscribed only by changes naming ``status``
    themselves: a job that leaves status out never changes it.
    """
    if current_status in SUPPRESSED_STATUSES and changes.get("status", current_status) != (
        current_status
    ):
        return {k: v for k, v in changes.items() if k != "status"}
    return changes


def newer_changes(
    current: Mapping[str, Any], changes: Changes, accepted_at_us: int
) -> tuple[dict[str, Any], dict[str, int]]:
    """The part of ``changes`` that no later-accepted job has already overwritten.

    Returns the columns whose value changes (keyed fields merged key by key: a null
    key removed, a null object cleared of every key no later job set) and the field
    versions the contact has afterwards.
    """
    versions: dict[str, int] = dict(current["field_versions"])
    values: dict[str, Any] = {}
    for field, value in changes.items():
        if field in KEYED_FIELDS:
            merged = _merged_object(field, current[field], value, versions, accepted_at_us)
            if merged != current[field]:
                values[field] = merged
        elif versions.get(field, 0) < accepted_at_us:
            versions[field] = accepted_at_us
            values[field] = value
    return values, versions


def _merged_object(
    field: str,
    current: Mapping[str, Any],
    change: Mapping[str, Any] | None,
    versions: dict[str, int],
    accepted_at_us: int,
) -> dict[str, Any]:
    """``current`` with ``change`` applied; updates ``versions`` in place."""
    cleared_at = versions.get(field, 0)
    prefix = f"{field}."
    if change is None:
        if cleared_at >= accepted_at_us:
            return dict(current)
        versions[field] = accepted_at_us
        # Keys set (or removed) by a job accepted at this time or later stand; the
        # older key versions say nothing the object's own version does not.
        for name in [n for n in versions if n.startswith(prefix)]:
            if versions[name] < accepted_at_us:
                del versions[name]
        return {k: v for k, v in current.items() if f"{prefix}{k}" in versions}
    merged = dict(current)
    for key, item in change.items():
        name = prefix + key
        if max(versions.get(name, 0), cleared_at) < accepted_at_us:
            versions[name] = accepted_at_us
            if item is None:
                merged.pop(key, None)
            else:
                merged[key] = item
    return merged


@dataclass(frozen=True, slots=True)
class Upsert:
    """What an upsert does to an existing contact.

    ``values``: the columns to write, ``field_versions`` included; empty when newer
    jobs already set everything it names (nothing to write). ``problem``: the message
    when the merged customFields would break a limit; then nothing of it applies.
    """

    values: dict[str, Any]
    problem: str | None = None


def upsert(current: Mapping[str, Any], changes: Changes, accepted_at_us: int) -> Upsert:
    """Apply an upsert's ``changes``, accepted at ``accepted_at_us``, to ``current``.

    Suppression safety first, then only what is newer than the stored versions; the
    customFields limits hold on the merged result.
    """
    safe = suppression_safe(current["status"], changes)
    values, versions = newer_changes(current, safe, accepted_at_us)
    if "custom_fields" in values:
        problem = custom_fields_problem(values["custom_fields"])
        if problem:
            return Upsert({}, problem)
    if not values and versions == current["field_versions"]:
        return Upsert({})
    values["field_versions"] = versions
    return Upsert(values)
