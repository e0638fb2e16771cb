"""The OpenAPI 3.1 description of the gateway, served at GET /openapi.json.

The request schema comes from the validation model itself and the response schemas
from the documents the service builds (``contacts_ingest.model.documents``), so none
can drift; a test drives every documented route and code and checks each answer
against it.
"""

from __future__ import annotations

import copy
from typing import Any

from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.model.contact import ContactRequest
from contacts_ingest.model.documents import response_schemas

_REF = "#/components/schemas/{model}"


def _json(schema_name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": _json("Error")}
    if headers:
        answer["headers"] = headers
    return answer


def _synchronous(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {
            "Preference-Applied": {"description": "`wait=N`.", "schema": {"type": "string"}},
            "Location": {"description": "/io/contacts/jobs/<job_id>", "schema": {"type": "string"}},
        },
        "content": _json("ContactAnswer"),
    }


_RATE_HEADERS = {
    "RateLimit-Policy": {
        "description": 'The quota: `"writes";q=<writes>;w=<window seconds>`.',
        "schema": {"type": "string"},
    },
    "RateLimit": {
        "description": 'What is left: `"writes";r=<remaining>;t=<seconds until one more>`.',
        "schema": {"type": "string"},
    },
}
_RETRY_AFTER = {"Retry-After": {"description": "Whole seconds.", "schema": {"type": "integer"}}}
_THROTTLED = (
    "too many failed authentications from this client address; a key this gateway has"
    " seen working is never refused so."
)


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    parameter = {"name": name, "in": "query", "required": False, "schema": schema}
    if description:
        parameter["description"] = description
    return parameter


def _too_many(limit: str) -> dict[str, Any]:
    """The 429 of a write route: its quota, or failed authentications from the address."""
    sometimes = {name: {**spec, "required": False} for name, spec in _RATE_HEADERS.items()}
    return _error(
        f"{limit}. Or {_THROTTLED} (then without the RateLimit headers)",
        {**sometimes, **_RETRY_AFTER},
    )


# What null means in the two objects an upsert merges key by key (contacts_ingest/merge.py).
_MERGED_OBJECTS = {
    "socialProfiles": "On upsert, merged key by key: a handle set to null is removed;"
    ' `"socialProfiles": null` removes every handle.',
    "customFields": "On upsert, merged key by key: a key set to null is removed;"
    ' `"customFields": null` removes every key. The limits hold on the merged result.',
}


def _schemas() -> dict[str, Any]:
    request = ContactRequest.model_json_schema(by_alias=True, ref_template=_REF)
    nested = request.pop("$defs", {})
    for name, meaning in _MERGED_OBJECTS.items():
        field = request["properties"][name]
        field["description"] = " ".join(filter(None, (field.get("description"), meaning)))
    return {
        **nested,
        **response_schemas(_REF),
        "ContactRequest": request,
        "BatchRequest": {
            "type": "object",
            "required": ["contacts"],
            "properties": {
                "contacts": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 1000,
                    "description": "Each item is a contact as POST /io/contacts/contacts takes"
                    " it; each is validated on its own and reported in the job's items.",
                    "items": {},
                }
            },
        },
    }


def openapi_document(settings: Settings) -> dict[str, Any]:
    """The document, with the configured rate limit written into its descriptions."""
    limit = settings.rate_limit_message
    unavailable = _error("Redis or PostgreSQL unreachable; nothing was enqueued.", _RETRY_AFTER)
    unauthorized = _error("Missing, unknown or revoked API key.")
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "contacts-ingest",
            "version": "1.0.0",
            "description": "Create or upsert contacts asynchronously; poll the job's outcome.",
        },
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/io/contacts/contacts": {
                "post": {
                    "operationId": "createContact",
                    "summary": "Create a contact, or upsert it with ?upsert=1",
                    "parameters": [
                        {
                            "name": "upsert",
                            "in": "query",
                            "required": False,
                            "schema": {"enum": ["0", "1", "true", "false"]},
                        },
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "description": (
                                "Repeat a request safely: within 24 h the same key (per user)"
                                " with the same body and upsert flag returns the original"
                                " job and enqueues nothing; 1 to 255 printable ASCII"
                                " characters, optionally in double quotes."
                            ),
                            "schema": {"type": "string", "minLength": 1, "maxLength": 257},
                        },
                        {
                            "name": "Prefer",
                            "in": "header",
                            "required": False,
                            "description": (
                                "`wait=N` (RFC 7240, N at most 10): hold the request until the"
                                " job is final and answer as the synchronous API would (201 or"
                                " 200 with the contact, 400, 409 or 500 with the error, plus"
                                " `Preference-Applied`); not final within N seconds: 202."
                                " `respond-async`: the 202 at once. Without either, the key's"
                                " mode decides (`keys create --respond`, else"
                                " `RESPOND_DEFAULT`): a key in wait mode is answered as if it"
                                " had sent `wait=N`, without `Preference-Applied`."
                            ),
                            "schema": {"type": "string"},
                        },
                    ],
                    "requestBody": {"required": True, "content": _json("ContactRequest")},
                    "responses": {
                        "200": _synchronous(
                            "Prefer: wait (or a key in wait mode), and an upsert updated the"
                            " contact."
                        ),
                        "201": _synchronous(
                            "Prefer: wait (or a key in wait mode), and the contact was created."
                        ),
                        "202": {
                            "description": "Accepted and queued.",
                            "headers": {
                                **_RATE_HEADERS,
                                "Location": {
                                    "description": "/io/contacts/jobs/<job_id>",
                                    "schema": {"type": "string"},
                                },
                                "Idempotent-Replayed": {
                                    "description": "`true` when this answers a repeated"
                                    " Idempotency-Key: the original job, nothing enqueued.",
                                    "required": False,
                                    "schema": {"const": "true"},
                                },
                                "Preference-Applied": {
                                    "description": "`respond-async`, when the request"
                                    " preferred it.",
                                    "required": False,
                                    "schema": {"const": "respond-async"},
                                },
                            },
                            "content": _json("JobAccepted"),
                        },
                        "400": _error(
                            "A rule is broken; `errors` lists every failing field. The body"
                            " as a whole: valid JSON, an object, nested at most 64 levels"
                            " deep (`Request body must not nest more than 64 levels deep`),"
                            " integers of at most 4300 digits (`Request body must not contain"
                            " integers of more than 4300 digits`); integers beyond 64 bits"
                            " are kept exactly."
                        ),
                        "401": unauthorized,
                        "409": _error(
                            "Prefer: wait (or a key in wait mode), and the job's outcome: a"
                            " contact with this email already exists (a plain create)."
                        ),
                        "422": _error(
                            "This Idempotency-Key was used for a different request"
                            " (type /problems/idempotency-key-reused)."
                        ),
                        "413": _error("Body over 64 KiB."),
                        "415": _error("Content-Type is not JSON."),
                        "429": _too_many(limit),
                        "431": {"description": "Request head (line and headers) over 64 KiB."},
                        "500": _error(
                            "An unexpected error (a bug), in the gateway, or, with Prefer:"
                            " wait, the job's own outcome (`The job could not be processed`)."
                        ),
                        "503": _error(
                            "Redis or PostgreSQL unreachable, or new jobs shed (the queue is"
                            " full, or Redis out of memory); nothing was enqueued. Or, with"
                            " REDIS_MIN_REPLICAS_ACK, the job not confirmed by Redis replicas"
                            " in time: it may be queued; retry with the same Idempotency-Key.",
                            _RETRY_AFTER,
                        ),
                    },
                }
            },
            "/io/contacts/jobs": {
                "get": {
                    "operationId": "listJobs",
                    "summary": "The caller's jobs, newest first, a page at a time",
                    "description": (
                        "Jobs of the key's user only, newest first (by acceptance time,"
                        " ties by job id). Following `next_cursor` never repeats or skips a"
                        " job, even while new jobs arrive or listed ones finish."
                    ),
                    "parameters": [
                        _query("status", {"enum": ["queued", "processing", "succeeded", "failed"]}),
                        _query(
                            "since",
                            {"type": "string", "format": "date-time"},
                            "Only jobs accepted at or after this RFC 3339 date-time.",
                        ),
                        _query(
                            "limit",
                            {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                        ),
                        _query(
                            "cursor",
                            {"type": "string"},
                            "The `next_cursor` of the previous page (opaque).",
                        ),
                    ],
                    "responses": {
                        "200": {"description": "A page of jobs.", "content": _json("JobList")},
                        "400": _error(
                            "A parameter is bad; `error` and `errors` name it:"
                            " `status must be queued, processing, succeeded or failed`,"
                            " `since must be an RFC 3339 date-time ...`, `limit must be an"
                            " integer from 1 to 100`, `cursor must be the next_cursor of an"
                            " earlier page`."
                        ),
                        "401": unauthorized,
                        "429": _error(f"Refused before any lookup: {_THROTTLED}", _RETRY_AFTER),
                        "503": unavailable,
                    },
                }
            },
            "/io/contacts/jobs/{job_id}": {
                "get": {
                    "operationId": "getJob",
                    "summary": "A job's status and, once final, its outcome",
                    "parameters": [
                        {
                            "name": "job_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "Prefer",
                            "in": "header",
                            "required": False,
                            "description": (
                                "`wait=N` (RFC 7240, N at most 10): answer once the job is"
                                " final, or after N seconds with its status then, with"
                                " `Preference-Applied: wait=N` (not when too many requests"
                                " wait already: then at once, without it)."
                            ),
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "The job.",
                            "headers": {
                                "Preference-Applied": {
                                    "description": "`wait=N`, when the request asked to wait.",
                                    "required": False,
                                    "schema": {"type": "string"},
                                }
                            },
                            "content": _json("JobStatus"),
                        },
                        "401": unauthorized,
                        "404": _error("No such job for this key's user."),
                        "429": _error(f"Refused before any lookup: {_THROTTLED}", _RETRY_AFTER),
                        "503": unavailable,
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "security": [],
                    "responses": {"200": {"description": "Alive.", "content": _json("Health")}},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readiness",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "Ready (or ready and shedding new jobs).",
                            "content": _json("Readiness"),
                        },
                        "503": {"description": "Not ready.", "content": _json("Readiness")},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics of every gateway process",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "This document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
    }
    document["paths"]["/io/contacts/webhooks/{endpoint_id}"] = {
        "post": _webhook_operation(document)
    }
    document["paths"]["/io/contacts/contacts/batch"] = {
        "post": _batch_operation(document, settings)
    }
    return document


def _batch_operation(document: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The contacts POST for up to 1,000 contacts at once, as one job."""
    operation: dict[str, Any] = copy.deepcopy(document["paths"]["/io/contacts/contacts"]["post"])
    responses = operation["responses"]
    del responses["201"], responses["409"]  # a batch reports duplicates per item
    responses["200"] = {
        **responses["200"],
        "description": "Prefer: wait, and the batch is done: counts and per-item results.",
        "content": _json("BatchAnswer"),
    }
    responses["413"] = _error("Body over 10 MiB.")
    responses["400"] = _error(
        "The batch itself is malformed (not an object, or contacts not an array of 1 to"
        " 1,000; nested past 64 levels, or an integer of more than 4300 digits, anywhere in"
        " it); a bad contact inside is reported in the job's items instead."
    )
    responses["429"] = _too_many(settings.batch_rate_limit_message)
    operation.update(
        operationId="createContactsBatch",
        summary="Create (or upsert, ?upsert=1) up to 1,000 contacts as one job",
        requestBody={"required": True, "content": _json("BatchRequest")},
    )
    return operation


def _webhook_operation(document: dict[str, Any]) -> dict[str, Any]:
    """The contacts POST as a webhook source sends it: signed instead of keyed, its
    operation fixed by the endpoint, answered with the job only."""
    operation: dict[str, Any] = copy.deepcopy(document["paths"]["/io/contacts/contacts"]["post"])

    def header(name: str, description: str) -> dict[str, Any]:
        return {
            "name": name,
            "in": "header",
            "required": True,
            "description": description,
            "schema": {"type": "string"},
        }

    operation.update(
        operationId="deliverWebhook",
        summary="A signed delivery from a webhook source (Standard Webhooks)",
        description=(
            "No bearer key: the Standard Webhooks signature (HMAC-SHA256 over"
            " `webhook-id.webhook-timestamp.body` with the endpoint's `whsec_` secret,"
            " 5-minute tolerance, several space-separated `v1,<base64>` signatures allowed)"
            " authenticates the delivery for the endpoint's user. `webhook-id` is the"
            " idempotency key: a retried delivery returns the original job. Create or"
            " upsert is the endpoint's, fixed when it was created (the signature does not"
            " cover the URL, so `?upsert` is refused). The answer is the job, never stored"
            " contact data: `Prefer: wait` does not apply here."
        ),
        security=[],
        parameters=[
            {"name": "endpoint_id", "in": "path", "required": True, "schema": {"type": "string"}},
            header("webhook-id", "The delivery's id, unique per message; 1-255 printable ASCII."),
            header("webhook-timestamp", "Unix seconds when the delivery was signed."),
            header("webhook-signature", "`v1,<base64 signature>`, space-separated if several."),
        ],
    )
    responses = operation["responses"]
    # A source never waits for the outcome (it must not read the user's contacts), and a
    # webhook-id is settled in the same step as the job: no 200, 201 or 409 here.
    for code in ("200", "201", "409"):
        del responses[code]
    responses["400"] = _error(
        "A rule is broken (`errors` lists every failing field), or the URL carries"
        " `?upsert` (the endpoint fixes the operation)."
    )
    responses["401"] = _error("Unknown endpoint, or no valid, fresh signature.")
    responses["422"]["description"] = responses["422"]["description"].replace(
        "Idempotency-Key", "webhook-id"
    )
    return operation
