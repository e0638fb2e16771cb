"""The contact request model: the single home of every field rule and error message.

The gateway and the workers both call :func:`parse_contact`, so a rule is written once.
Messages are the API reference's own wording.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Annotated, Any, get_args

import orjson
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from contacts_ingest.model.documents import ContactStatus, FieldError
from contacts_ingest.model.email_syntax import normalize_email

STATUSES: tuple[str, ...] = get_args(ContactStatus)
EMAIL_MAX_CHARS = 254
CUSTOM_FIELDS_MAX_KEYS = 20
CUSTOM_FIELDS_MAX_BYTES = 8192
# Deeper values would only exist to hurt parsers on the way to the database.
CUSTOM_FIELDS_MAX_DEPTH = 32

EMAIL_MESSAGE = "A valid email is required"
STATUS_MESSAGE = "status must be subscribed, unsubscribed, bounced, or complained"
BODY_NOT_OBJECT_MESSAGE = "Request body must be a JSON object"
CUSTOM_FIELDS_KEYS_MESSAGE = f"customFields must have {CUSTOM_FIELDS_MAX_KEYS} keys or fewer"
CUSTOM_FIELDS_SIZE_MESSAGE = (
    f"customFields must be {CUSTOM_FIELDS_MAX_BYTES} bytes (8 KB) of JSON or fewer"
)
CUSTOM_FIELDS_DEPTH_MESSAGE = (
    f"customFields must not nest more than {CUSTOM_FIELDS_MAX_DEPTH} levels deep"
)
WORKSPACE_MESSAGE = "workspaceId must be a UUID"


class ContactInvalid(Exception):
    """The request breaks at least one rule; ``errors`` lists every failing field."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__(errors[0]["message"])
        self.errors = errors

    @property
    def message(self) -> str:
        return self.errors[0]["message"]


def _json_problem(value: Any) -> str | None:
    """Why a decoded JSON value cannot be stored, or None. Walks without recursion.

    Depth counts objects and arrays as a reader does: the value itself is level 1,
    each object or array inside it one more; the strings and numbers they hold add none.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list) and depth > CUSTOM_FIELDS_MAX_DEPTH:
            return CUSTOM_FIELDS_DEPTH_MESSAGE
        if isinstance(item, str):
            if "\x00" in item:
                return "customFields must not contain NUL characters"
        elif isinstance(item, dict):
            for key, child in item.items():
                if "\x00" in key:
                    return "customFields must not contain NUL characters"
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, float) and not math.isfinite(item):
            # Only internal producers can send these; PostgreSQL's JSON cannot hold them.
            return "customFields must hold only finite numbers"
    return None


def _reject_nul(value: str) -> str:
    # PostgreSQL text cannot hold U+0000: refuse it here rather than fail in the worker.
    if "\x00" in value:
        raise PydanticCustomError("nul_character", "must not contain NUL characters")
    return value


def _text_schema(max_chars: int) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "maxLength": max_chars, "pattern": "^[^\\u0000]*$"})


_NoNul = AfterValidator(_reject_nul)
Text50 = Annotated[str, StringConstraints(max_length=50, strict=True), _NoNul, _text_schema(50)]
Text100 = Annotated[str, StringConstraints(max_length=100, strict=True), _NoNul, _text_schema(100)]
Text150 = Annotated[str, StringConstraints(max_length=150, strict=True), _NoNul, _text_schema(150)]
Text500 = Annotated[str, StringConstraints(max_length=500, strict=True), _NoNul, _text_schema(500)]


_SPECIAL_USE_DOMAIN_PATTERN = (
    "[@.](?:" + "|".join(name.replace(".", "\\.") for name in SPECIAL_USE_DOMAIN_NAMES) + ")\\.?$"
)


def _normalize_email(value: object) -> str:
    if not isinstance(value, str) or len(value) > EMAIL_MAX_CHARS or "\x00" in value:
        raise PydanticCustomError("email", EMAIL_MESSAGE)
    try:
        normalized = normalize_email(value)
    except EmailNotValidError:
        raise PydanticCustomError("email", EMAIL_MESSAGE) from None
    if len(normalized) > EMAIL_MAX_CHARS:  # IDNA mapping can lengthen a domain ("ﬁ" -> "fi")
        raise PydanticCustomError("email", EMAIL_MESSAGE)
    if len(normalized.casefold()) > EMAIL_MAX_CHARS:  # the stored key ("ΐ" folds to 3 chars)
        raise PydanticCustomError("email", EMAIL_MESSAGE)
    return normalized


def custom_fields_problem(fields: dict[str, Any]) -> str | None:
    """Return the message for a customFields object over its limits, or None if it fits.

    Also applied by the worker to the result of an upsert's key-by-key merge.
    """
    if len(fields) > CUSTOM_FIELDS_MAX_KEYS:
        return CUSTOM_FIELDS_KEYS_MESSAGE
    try:
        size = len(orjson.dumps(fields))
    except TypeError:  # an integer beyond 64 bits: measure it the slow way
        size = len(json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode())
    if size > CUSTOM_FIELDS_MAX_BYTES:
        return CUSTOM_FIELDS_SIZE_MESSAGE
    return None


def _check_custom_fields(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if not value:
        return value
    problem = _json_problem(value)
    if problem:
        raise PydanticCustomError("custom_fields", problem)
    # Null values are removals; the limits apply to what would be stored.
    problem = custom_fields_problem({k: v for k, v in value.items() if v is not None})
    if problem:
        raise PydanticCustomError("custom_fields", problem)
    return value


def _canonical_uuid(value: object) -> str | None:
    if value is None:
        return None
    try:
        if not isinstance(value, str):
            raise ValueError
        return str(uuid.UUID(value))
    except ValueError:
        raise PydanticCustomError("workspace_id", WORKSPACE_MESSAGE) from None


class SocialProfiles(BaseModel):
    """Allowed networks only; unknown keys are dropped silently, null removes a handle."""

    model_config = ConfigDict(extra="ignore")

    linkedin: Text500 | None = None
    twitter: Text500 | None = None
    instagram: Text500 | None = None
    telegram: Text500 | None = None
    whatsapp: Text500 | None = None
    reddit: Text500 | None = None
    youtube: Text500 | None = None


class ContactRequest(BaseModel):
    """The body of POST /io/contacts/contacts. Unknown top-level fields are ignored.

    A field set to null clears it (on create: leaves it empty); an absent field is
    left untouched by an upsert.
    """

    model_config = ConfigDict(extra="ignore", populate_by_name=False, frozen=True)

    email: Annotated[
        str,
        PlainValidator(_normalize_email),
        WithJsonSchema(
            {
                "type": "string",
                "format": "email",
                "maxLength": EMAIL_MAX_CHARS,
                # email-validator refuses special-use names: they can never receive mail.
                "not": {"pattern": _SPECIAL_USE_DOMAIN_PATTERN},
            }
        ),
    ]
    first_name: Text100 | None = Field(default=None, alias="firstName")
    last_name: Text100 | None = Field(default=None, alias="lastName")
    phone: Text50 | None = None
    company: Text150 | None = None
    job_title: Text100 | None = Field(default=None, alias="jobTitle")
    social_profiles: SocialProfiles | None = Field(default=None, alias="socialProfiles")
    status: ContactStatus = "subscribed"
    custom_fields: Annotated[
        dict[str, Any] | None,
        AfterValidator(_check_custom_fields),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "object", "maxProperties": CUSTOM_FIELDS_MAX_KEYS},
                    {"type": "null"},
                ],
                "description": "At most 20 keys and 8192 bytes of compact JSON, 32 levels deep.",
            }
        ),
    ] = Field(default=None, alias="customFields", strict=True)
    source: Text100 | None = None
    workspace_id: Annotated[
        str | None,
        PlainValidator(_canonical_uuid),
        WithJsonSchema({"anyOf": [{"type": "string", "format": "uuid"}, {"type": "null"}]}),
    ] = Field(default=None, alias="workspaceId")

    @property
    def email_key(self) -> str:
        """The uniqueness key: contacts are unique per user on the case-folded email."""
        return self.email.casefold()

    def changes(self) -> dict[str, Any]:
        """Stored column -> value for every field the request named (email included).

        socialProfiles and customFields come back as dicts in which None means
        "remove this key".
        """
        out: dict[str, Any] = {}
        for name in self.model_fields_set:
            value = getattr(self, name)
            if name == "social_profiles":
                value = {} if value is None else value.model_dump(exclude_unset=True)
            elif name == "custom_fields" and value is None:
                value = {}
            out[name] = value
        return out


def _message_for(error: ErrorDetails) -> tuple[str, str]:
    loc = [str(part) for part in error["loc"]]
    top = loc[0] if loc else "body"
    field = ".".join(loc[:2]) if top == "socialProfiles" and len(loc) > 1 else top
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if top == "email":
        return field, EMAIL_MESSAGE
    if top == "status":
        return field, STATUS_MESSAGE
    if kind == "string_too_long":
        return field, f"{field} must be {ctx['max_length']} characters or fewer"
    if kind in ("string_type", "string_sub_type"):
        suffix = " or null" if field != top else ""
        return field, f"{field} must be a string{suffix}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return field, f"{field} must be an object"
    if kind == "nul_character":
        return field, f"{field} must not contain NUL characters"
    # Our own PydanticCustomErrors already carry the final sentence.
    return field, error["msg"]


# Errors are listed in the order the reference lists the fields.
_FIELD_ORDER = {
    field.alias or name: position
    for position, (name, field) in enumerate(ContactRequest.model_fields.items())
}


def parse_contact(body: object) -> ContactRequest:
    """Validate a decoded JSON body, returning the normalized request.

    Raises :class:`ContactInvalid` listing every failing field, in field order.
    """
    if not isinstance(body, dict):
        raise ContactInvalid([FieldError(field="body", message=BODY_NOT_OBJECT_MESSAGE)])
    try:
        return ContactRequest.model_validate(body)
    except ValidationError as exc:
        errors: list[FieldError] = []
        seen: set[str] = set()
        for detail in exc.errors(include_url=False, include_input=False):
            field, message = _message_for(detail)
            if field not in seen:
                seen.add(field)
                errors.append(FieldError(field=field, message=message))
        errors.sort(key=lambda e: _FIELD_ORDER.get(e["field"].split(".")[0], -1))
        raise ContactInvalid(errors) from None


BATCH_MAX_CONTACTS = 1000
BATCH_SHAPE_MESSAGE = f"contacts must be an array of 1 to {BATCH_MAX_CONTACTS} contacts"


def parse_batch(body: object) -> list[object]:
    """The items of a batch body ``{"contacts": [...]}``; each is validated on its own
    (``parse_contact``) so one bad contact does not sink the others.

    Raises :class:`ContactInvalid` when the batch itself is malformed.
    """
    if not isinstance(body, dict):
        raise ContactInvalid([FieldError(field="body", message=BODY_NOT_OBJECT_MESSAGE)])
    items = body.get("contacts")
    if not isinstance(items, list) or not 0 < len(items) <= BATCH_MAX_CONTACTS:
        raise ContactInvalid([FieldError(field="contacts", message=BATCH_SHAPE_MESSAGE)])
    return items
