"""GET /openapi.json tells the truth: every route, every code, every body shape."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from falcon.inspect import inspect_routes
from falcon.testing import Result
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from contacts_ingest.model.documents import CONTACT_FIELDS as MODEL_CONTACT_FIELDS
from tests.conftest import CONTACT_FIELDS, REQUEST_FIELDS
from tests.unit.harness import (
    ALICE,
    BOB,
    JSON,
    WEBHOOK_ENDPOINT,
    Broken,
    Harness,
    make_harness,
    signed,
)

# Answered by the HTTP server (granian) before the app sees the request; the
# end-to-end hostile-input test covers it.
SERVER_CODES = {
    ("post", "/io/contacts/contacts", "431"),
    ("post", "/io/contacts/contacts/batch", "431"),
    ("post", "/io/contacts/webhooks/{endpoint_id}", "431"),
}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    result = make_harness().client.simulate_get("/openapi.json")
    assert result.status_code == 200
    loaded: dict[str, Any] = result.json
    return loaded


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_every_route_is_documented_and_every_documented_route_exists(
    document: dict[str, Any],
) -> None:
    app = make_harness().client.app
    served = {
        (method.lower(), route.path)
        for route in inspect_routes(app)
        for method in (m.method for m in route.methods if m.internal is False)
    }
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert served == documented


def _final_row(job_id: str, user_id: str = "alice") -> dict[str, Any]:
    moment = datetime(2026, 6, 11, 12, 0, tzinfo=UTC)
    contact: dict[str, Any] = {
        "id": "cnt_1",
        "email": "bob@example.com",
        **dict.fromkeys(("first_name", "last_name", "phone", "company", "job_title"), None),
        "social_profiles": {},
        "status": "subscribed",
        "lead_score": 0,
        "created_at": "2026-06-11T12:00:00Z",
        "custom_fields": {},
        "source": None,
        "workspace_id": None,
        "updated_at": "2026-06-11T12:00:00Z",
    }
    return {
        "job_id": job_id,
        "user_id": user_id,
        "status": "succeeded",
        "operation": "create",
        "accepted_at": moment,
        "finished_at": moment,
        "result": {"code": 201, "data": contact},
        "error": None,
    }


def _post(gw: Harness, payload: Any = None, **kw: Any) -> Result:
    kw.setdefault("headers", {**ALICE, **JSON})
    if "body" not in kw:
        kw["json"] = payload
    return gw.client.simulate_post("/io/contacts/contacts", **kw)


def _redis_down(gw: Harness) -> Harness:
    assert gw.redis_server is not None
    gw.redis_server.connected = False
    return gw


def _idempotency_reused() -> Result:
    gw = make_harness()
    headers = {**ALICE, **JSON, "Idempotency-Key": "k"}
    _post(gw, {"email": "a@example.com"}, headers=headers)
    return _post(gw, {"email": "b@example.com"}, headers=headers)


HOOK = "/io/contacts/webhooks/{endpoint_id}"
WAIT = {"Prefer": "wait=5"}


def _waited(code: int) -> Result:
    """A request that asked to wait, against a worker that is instant."""
    outcome = "A contact with this email already exists" if code == 409 else None
    gw = make_harness(outcome=(code, outcome or _final_row("job_x")["result"]["data"]))
    return _post(gw, {"email": "bob@example.com"}, headers={**ALICE, **JSON, **WAIT})


def _deliver(gw: Harness, body: bytes, msg_id: str = "m", **kw: Any) -> Result:
    headers = kw.pop("headers", signed(body, msg_id=msg_id))
    return gw.client.simulate_post(
        f"/io/contacts/webhooks/{WEBHOOK_ENDPOINT}", body=body, headers=headers, **kw
    )


def _delivery_reused() -> Result:
    gw = make_harness()
    _deliver(gw, b'{"email": "a@example.com"}')
    return _deliver(gw, b'{"email": "b@example.com"}')


def _listed() -> Result:
    """A listing of one pending and one final job."""
    gw = make_harness()
    gw.final_rows["job_1"] = _final_row("job_1")
    _post(gw, {"email": "a@example.com"})
    result = gw.client.simulate_get("/io/contacts/jobs", headers=ALICE)
    assert len(result.json["data"]) == 2, result.text
    return result


WEBHOOK_SCENARIOS: dict[tuple[str, str, str], Callable[[], Result]] = {
    ("post", HOOK, "202"): lambda: _deliver(make_harness(), b'{"email": "a@example.com"}'),
    ("post", HOOK, "400"): lambda: _deliver(make_harness(), b'{"email": "x"}'),
    ("post", HOOK, "401"): lambda: _deliver(
        make_harness(), b"{}", headers={"Content-Type": "application/json"}
    ),
    ("post", HOOK, "413"): lambda: _deliver(make_harness(), b'{"pad": "' + b"x" * 70_000 + b'"}'),
    ("post", HOOK, "415"): lambda: _deliver(
        make_harness(), b"{}", headers={"Content-Type": "text/plain"}
    ),
    ("post", HOOK, "422"): _delivery_reused,
    ("post", HOOK, "429"): lambda: (
        lambda gw: [_deliver(gw, b'{"email": "a@example.com"}', msg_id=f"m{i}") for i in range(2)][
            -1
        ]
    )(make_harness(limit=1)),
    ("post", HOOK, "500"): lambda: _deliver(
        make_harness(webhooks=Broken()), b'{"email": "a@example.com"}'
    ),
    ("post", HOOK, "503"): lambda: _deliver(
        _redis_down(make_harness()), b'{"email": "a@example.com"}'
    ),
}


BATCH = "/io/contacts/contacts/batch"
ONE = {"contacts": [{"email": "a@example.com"}]}


def _batch(gw: Harness, payload: Any = ONE, **kw: Any) -> Result:
    kw.setdefault("headers", {**ALICE, **JSON})
    if "body" not in kw:
        kw["json"] = payload
    return gw.client.simulate_post(BATCH, **kw)


def _batch_reused() -> Result:
    gw = make_harness()
    headers = {**ALICE, **JSON, "Idempotency-Key": "k"}
    _batch(gw, headers=headers)
    return _batch(gw, {"contacts": [{"email": "b@example.com"}]}, headers=headers)


BATCH_SCENARIOS: dict[tuple[str, str, str], Callable[[], Result]] = {
    ("post", BATCH, "200"): lambda: _batch(
        make_harness(
            outcome=(200, None),
            batch_items=[{"index": 0, "code": 201, "id": "cnt_1", "email": "a@example.com"}],
        ),
        headers={**ALICE, **JSON, **WAIT},
    ),
    ("post", BATCH, "202"): lambda: _batch(make_harness()),
    ("post", BATCH, "400"): lambda: _batch(make_harness(), {"contacts": []}),
    ("post", BATCH, "401"): lambda: _batch(make_harness(), headers=JSON),
    ("post", BATCH, "413"): lambda: _batch(make_harness(), body=b"{" + b" " * (10 * 2**20) + b"}"),
    ("post", BATCH, "415"): lambda: _batch(
        make_harness(), body=b"{}", headers={**ALICE, "Content-Type": "text/plain"}
    ),
    ("post", BATCH, "422"): _batch_reused,
    ("post", BATCH, "429"): lambda: (lambda gw: [_batch(gw) for _ in range(2)][-1])(
        make_harness(batch_limit=1)
    ),
    ("post", BATCH, "500"): lambda: _batch(make_harness(keys=Broken())),
    ("post", BATCH, "503"): lambda: _batch(_redis_down(make_harness())),
}


SCENARIOS: dict[tuple[str, str, str], Callable[[], Result]] = {
    **WEBHOOK_SCENARIOS,
    **BATCH_SCENARIOS,
    ("post", "/io/contacts/contacts", "200"): lambda: _waited(200),
    ("post", "/io/contacts/contacts", "201"): lambda: _waited(201),
    ("post", "/io/contacts/contacts", "409"): lambda: _waited(409),
    ("post", "/io/contacts/contacts", "422"): _idempotency_reused,
    ("post", "/io/contacts/contacts", "202"): lambda: _post(
        make_harness(), {"email": "a@example.com"}
    ),
    ("post", "/io/contacts/contacts", "400"): lambda: _post(make_harness(), {"email": "x"}),
    ("post", "/io/contacts/contacts", "401"): lambda: _post(
        make_harness(), {"email": "a@example.com"}, headers=JSON
    ),
    ("post", "/io/contacts/contacts", "413"): lambda: _post(
        make_harness(), {"email": "a@example.com", "pad": "x" * 70_000}
    ),
    ("post", "/io/contacts/contacts", "415"): lambda: _post(
        make_harness(), body=b"{}", headers={**ALICE, "Content-Type": "text/plain"}
    ),
    ("post", "/io/contacts/contacts", "429"): lambda: (
        lambda gw: [_post(gw, {"email": "a@example.com"}) for _ in range(2)][-1]
    )(make_harness(limit=1)),
    ("post", "/io/contacts/contacts", "500"): lambda: _post(
        make_harness(outcome=(500, "The job could not be processed")),
        {"email": "bob@example.com"},
        headers={**ALICE, **JSON, **WAIT},
    ),
    ("post", "/io/contacts/contacts", "503"): lambda: _post(
        _redis_down(make_harness()), {"email": "a@example.com"}
    ),
    ("get", "/io/contacts/jobs/{job_id}", "200"): lambda: (
        lambda gw: gw.client.simulate_get(
            f"/io/contacts/jobs/{_post(gw, {'email': 'a@example.com'}).json['data']['job_id']}",
            headers=ALICE,
        )
    )(make_harness()),
    ("get", "/io/contacts/jobs/{job_id}", "401"): lambda: make_harness().client.simulate_get(
        "/io/contacts/jobs/job_1"
    ),
    ("get", "/io/contacts/jobs/{job_id}", "429"): lambda: (
        lambda gw: [gw.client.simulate_get("/io/contacts/jobs/job_1") for _ in range(2)][-1]
    )(make_harness(auth_failures=1)),
    ("get", "/io/contacts/jobs/{job_id}", "404"): lambda: make_harness().client.simulate_get(
        "/io/contacts/jobs/job_1", headers=BOB
    ),
    ("get", "/io/contacts/jobs/{job_id}", "503"): lambda: _redis_down(
        make_harness()
    ).client.simulate_get("/io/contacts/jobs/job_1", headers=ALICE),
    ("get", "/io/contacts/jobs", "200"): lambda: _listed(),
    ("get", "/io/contacts/jobs", "400"): lambda: make_harness().client.simulate_get(
        "/io/contacts/jobs", params={"limit": "0"}, headers=ALICE
    ),
    ("get", "/io/contacts/jobs", "401"): lambda: make_harness().client.simulate_get(
        "/io/contacts/jobs"
    ),
    ("get", "/io/contacts/jobs", "429"): lambda: (
        lambda gw: [gw.client.simulate_get("/io/contacts/jobs") for _ in range(2)][-1]
    )(make_harness(auth_failures=1)),
    ("get", "/io/contacts/jobs", "503"): lambda: _redis_down(make_harness()).client.simulate_get(
        "/io/contacts/jobs", headers=ALICE
    ),
    ("get", "/healthz", "200"): lambda: make_harness().client.simulate_get("/healthz"),
    ("get", "/readyz", "200"): lambda: make_harness().client.simulate_get("/readyz"),
    ("get", "/readyz", "503"): lambda: make_harness(ready=False).client.simulate_get("/readyz"),
    ("get", "/openapi.json", "200"): lambda: make_harness().client.simulate_get("/openapi.json"),
    ("get", "/metrics", "200"): lambda: make_harness().client.simulate_get("/metrics"),
}


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """Validates against ``schema``, resolving its $refs inside the document."""
    registry: Registry[Any] = Registry().with_resource(
        "urn:openapi", Resource.from_contents(document, default_specification=DRAFT202012)
    )
    if "$ref" in schema:
        schema = {"$ref": "urn:openapi" + schema["$ref"]}
    return Draft202012Validator(schema, registry=registry)


def _documented_codes(document: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (method, path, code)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        for code in operation["responses"]
    }


def test_every_documented_code_has_a_scenario(document: dict[str, Any]) -> None:
    assert _documented_codes(document) - SERVER_CODES == set(SCENARIOS)


@pytest.mark.parametrize("key", sorted(SCENARIOS), ids=lambda k: " ".join(k))
def test_each_answer_matches_its_documented_code_body_and_headers(
    document: dict[str, Any], key: tuple[str, str, str]
) -> None:
    method, path, code = key
    result = SCENARIOS[key]()
    assert str(result.status_code) == code, result.text
    documented = document["paths"][path][method]["responses"][code]
    for header, spec in documented.get("headers", {}).items():
        if spec.get("required", True):  # headers sent only sometimes say required: false
            assert header in result.headers, header
    schema = documented.get("content", {}).get("application/json", {}).get("schema")
    if schema is not None:
        errors = [e.message for e in _validator(document, schema).iter_errors(result.json)]
        assert not errors


def test_a_final_job_matches_the_job_schema(document: dict[str, Any]) -> None:
    gw = make_harness()
    gw.final_rows["job_1"] = _final_row("job_1")
    result = gw.client.simulate_get("/io/contacts/jobs/job_1", headers=ALICE)
    validator = _validator(document, {"$ref": "#/components/schemas/JobStatus"})
    assert not [e.message for e in validator.iter_errors(result.json)]


def test_the_request_schema_names_every_field_of_the_model(document: dict[str, Any]) -> None:
    properties = document["components"]["schemas"]["ContactRequest"]["properties"]
    assert list(properties) == REQUEST_FIELDS
    assert properties["firstName"]["anyOf"][0]["maxLength"] == 100
    assert document["components"]["schemas"]["ContactRequest"]["required"] == ["email"]


def test_the_contact_document_has_the_references_fields_in_its_order_then_ours(
    document: dict[str, Any],
) -> None:
    """The shape the service builds, and the schema the document publishes, against
    the field list written down from the API reference."""
    assert list(MODEL_CONTACT_FIELDS) == CONTACT_FIELDS
    contact = document["components"]["schemas"]["Contact"]
    assert list(contact["properties"]) == CONTACT_FIELDS
    assert contact["required"] == CONTACT_FIELDS
    assert list(_final_row("job_1")["result"]["data"]) == CONTACT_FIELDS


def test_every_response_schema_is_referenced_and_every_reference_resolves(
    document: dict[str, Any],
) -> None:
    schemas = document["components"]["schemas"]
    text = json.dumps(document)
    referenced = set(re.findall(r'"#/components/schemas/([A-Za-z]+)"', text))
    assert referenced <= set(schemas)
    assert set(schemas) - referenced == set()


def test_the_request_schema_says_what_null_does_to_the_merged_objects(
    document: dict[str, Any],
) -> None:
    properties = document["components"]["schemas"]["ContactRequest"]["properties"]
    assert (
        '`"socialProfiles": null` removes every handle'
        in properties["socialProfiles"]["description"]
    )
    custom = properties["customFields"]["description"]
    assert custom.startswith("At most 20 keys")  # the model's own words stay first
    assert '`"customFields": null` removes every key' in custom
