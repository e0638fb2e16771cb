"""The gateway's HTTP contract, driven in-process with fakes for its collaborators."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tests.unit.fake_redis import FakeRedis
from tests.unit.harness import ALICE, BOB, JSON, Harness, make_harness


@pytest.fixture
def gw() -> Harness:
    return make_harness()


def test_accepted_contact_is_enqueued_with_202_location_and_job(gw: Harness) -> None:
    result = gw.post({"email": "bob@example.com", "firstName": "Bob"})
    assert result.status_code == 202
    data = result.json["data"]
    assert data["status"] == "queued"
    assert data["operation"] == "create"
    assert data["job_id"].startswith("job_")
    assert result.headers["Location"] == f"/io/contacts/jobs/{data['job_id']}"
    [job] = gw.published
    assert job.job_id == data["job_id"]
    assert job.user_id == "alice"
    assert job.body == {"email": "bob@example.com", "firstName": "Bob"}


def test_upsert_flag_selects_the_upsert_operation(gw: Harness) -> None:
    result = gw.post({"email": "bob@example.com"}, params={"upsert": "1"})
    assert result.json["data"]["operation"] == "upsert"
    assert gw.published[0].operation == "upsert"


def test_unreadable_upsert_flag_is_a_400(gw: Harness) -> None:
    result = gw.post({"email": "bob@example.com"}, params={"upsert": "maybe"})
    assert result.status_code == 400
    assert result.json["error"] == "upsert must be 1 or 0"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer cik_unknown"}, {"Authorization": "Basic cik_alice"}],
)
def test_missing_or_unknown_key_is_401_and_nothing_is_enqueued(
    gw: Harness, headers: dict[str, str]
) -> None:
    result = gw.client.simulate_post(
        "/io/contacts/contacts", json={"email": "bob@example.com"}, headers=headers
    )
    assert result.status_code == 401
    assert result.json == {"error": "A valid API key is required"}
    assert result.headers["WWW-Authenticate"].startswith("Bearer")
    assert gw.published == []


def test_validation_failure_lists_every_field_and_enqueues_nothing(gw: Harness) -> None:
    result = gw.post({"email": "nope", "firstName": "x" * 101})
    assert result.status_code == 400
    assert result.json == {
        "error": "A valid email is required",
        "errors": [
            {"field": "email", "message": "A valid email is required"},
            {"field": "firstName", "message": "firstName must be 100 characters or fewer"},
        ],
    }
    assert gw.published == []


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe", b'{"email": NaN}'])
def test_invalid_json_is_a_400(gw: Harness, raw: bytes) -> None:
    result = gw.client.simulate_post("/io/contacts/contacts", body=raw, headers={**ALICE, **JSON})
    assert result.status_code == 400
    assert result.json["error"] == "Request body must be valid JSON"


def test_a_json_array_body_is_a_400(gw: Harness) -> None:
    result = gw.post([{"email": "bob@example.com"}])
    assert result.status_code == 400
    assert result.json["error"] == "Request body must be a JSON object"


def test_a_body_over_64_kib_is_a_413(gw: Harness) -> None:
    result = gw.post({"email": "bob@example.com", "pad": "x" * (64 * 1024)})
    assert result.status_code == 413
    assert gw.published == []


def test_a_body_of_exactly_64_kib_is_read(gw: Harness) -> None:
    skeleton = b'{"email":"bob@example.com","pad":""}'
    raw = skeleton[:-2] + b"x" * (64 * 1024 - len(skeleton)) + b'"}'
    assert len(raw) == 64 * 1024
    result = gw.client.simulate_post("/io/contacts/contacts", body=raw, headers={**ALICE, **JSON})
    assert result.status_code == 202


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_non_json_content_type_is_a_415(gw: Harness, content_type: str | None) -> None:
    headers = {**ALICE}
    if content_type:
        headers["Content-Type"] = content_type
    result = gw.client.simulate_post(
        "/io/contacts/contacts", body=b'{"email": "bob@example.com"}', headers=headers
    )
    assert result.status_code == 415
    assert result.json == {"error": "Content-Type must be application/json"}


def test_json_with_charset_parameter_is_accepted(gw: Harness) -> None:
    result = gw.client.simulate_post(
        "/io/contacts/contacts",
        body=b'{"email": "bob@example.com"}',
        headers={**ALICE, "Content-Type": "application/json; charset=utf-8"},
    )
    assert result.status_code == 202


def test_responses_carry_the_rate_limit_headers(gw: Harness) -> None:
    result = gw.post({"email": "bob@example.com"})
    assert result.headers["RateLimit-Policy"] == '"writes";q=200;w=60'
    assert result.headers["RateLimit"] == '"writes";r=199;t=60'


def test_the_write_over_the_limit_is_429_while_another_user_is_unaffected() -> None:
    gw = make_harness(limit=3)
    statuses = [gw.post({"email": f"u{i}@example.com"}).status_code for i in range(3)]
    assert statuses == [202, 202, 202]
    refused = gw.post({"email": "late@example.com"})
    assert refused.status_code == 429
    assert refused.json == {"error": "Too many requests \u2014 3 writes per user per 60 seconds"}
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["RateLimit"].startswith('"writes";r=0;')
    assert len(gw.published) == 3
    other = gw.client.simulate_post(
        "/io/contacts/contacts", json={"email": "x@example.com"}, headers=BOB
    )
    assert other.status_code == 202


def test_invalid_writes_count_against_the_limit() -> None:
    gw = make_harness(limit=2)
    assert gw.post({"email": "nope"}).status_code == 400
    assert gw.post({"email": "ok@example.com"}).status_code == 202
    assert gw.post({"email": "ok2@example.com"}).status_code == 429


def test_a_queued_job_is_visible_to_its_owner_before_any_worker(gw: Harness) -> None:
    job_id = gw.post({"email": "bob@example.com"}).json["data"]["job_id"]
    result = gw.client.simulate_get(f"/io/contacts/jobs/{job_id}", headers=ALICE)
    assert result.status_code == 200
    data = result.json["data"]
    assert data["job_id"] == job_id
    assert data["status"] == "queued"
    assert data["operation"] == "create"
    assert data["created_at"].endswith("Z")
    assert (data["finished_at"], data["result"], data["error"]) == (None, None, None)


def test_another_users_job_is_404_never_403(gw: Harness) -> None:
    job_id = gw.post({"email": "bob@example.com"}).json["data"]["job_id"]
    result = gw.client.simulate_get(f"/io/contacts/jobs/{job_id}", headers=BOB)
    assert result.status_code == 404
    assert result.json == {"error": "Job not found"}


def test_another_users_final_job_is_404(gw: Harness) -> None:
    gw.final_rows["job_x"] = {"user_id": "alice", "job_id": "job_x"}
    assert gw.client.simulate_get("/io/contacts/jobs/job_x", headers=BOB).status_code == 404


def test_a_final_row_wins_over_the_pending_record(gw: Harness) -> None:
    job_id = gw.post({"email": "bob@example.com"}).json["data"]["job_id"]
    moment = datetime(2026, 6, 11, 12, 0, tzinfo=UTC)
    gw.final_rows[job_id] = {
        "job_id": job_id,
        "user_id": "alice",
        "status": "failed",
        "operation": "create",
        "accepted_at": moment,
        "finished_at": moment,
        "result": None,
        "error": {"code": 409, "message": "A contact with this email already exists"},
    }
    data = gw.client.simulate_get(f"/io/contacts/jobs/{job_id}", headers=ALICE).json["data"]
    assert data["status"] == "failed"
    assert data["finished_at"] == "2026-06-11T12:00:00Z"
    assert data["error"]["code"] == 409


def test_unknown_job_is_404(gw: Harness) -> None:
    result = gw.client.simulate_get("/io/contacts/jobs/job_nope", headers=ALICE)
    assert result.status_code == 404


def test_unknown_route_is_a_json_404(gw: Harness) -> None:
    result = gw.client.simulate_get("/nothing-here")
    assert result.status_code == 404
    assert result.json == {"error": "Not found"}


def test_healthz_needs_no_key_and_touches_nothing() -> None:
    gw = make_harness(ready=False)
    assert gw.client.simulate_get("/healthz").json == {"status": "ok"}


def test_readyz_is_503_naming_the_unreachable_dependency() -> None:
    assert make_harness().client.simulate_get("/readyz").status_code == 200
    result = make_harness(ready=False).client.simulate_get("/readyz")
    assert result.status_code == 503
    assert result.json["checks"] == {"redis": "ok", "postgres": "unavailable"}


def test_redis_down_is_503_never_202(gw: Harness) -> None:
    assert gw.redis_server is not None
    gw.redis_server.connected = False
    result = gw.post({"email": "bob@example.com"})
    assert result.status_code == 503
    assert result.json == {"error": "Service temporarily unavailable, try again"}
    gw.redis_server.connected = True
    assert FakeRedis(server=gw.redis_server).keys("t:job:*") == []
    assert gw.published == []


def test_request_id_is_echoed_or_created(gw: Harness) -> None:
    given = gw.post({"email": "bob@example.com"}, headers={"X-Request-ID": "abc-123"})
    assert given.headers["X-Request-ID"] == "abc-123"
    assert gw.published[0].request_id == "abc-123"
    fresh = gw.post({"email": "bob2@example.com"})
    assert fresh.headers["X-Request-ID"].startswith("req_")


def test_a_final_job_is_still_answered_while_redis_is_down(gw: Harness) -> None:
    moment = datetime(2026, 6, 11, 12, 0, tzinfo=UTC)
    gw.final_rows["job_done"] = {
        "job_id": "job_done",
        "user_id": "alice",
        "status": "succeeded",
        "operation": "create",
        "accepted_at": moment,
        "finished_at": moment,
        "result": {"code": 201, "data": {}},
        "error": None,
    }
    assert gw.redis_server is not None
    gw.redis_server.connected = False
    assert gw.client.simulate_get("/io/contacts/jobs/job_done", headers=ALICE).status_code == 200
    assert gw.client.simulate_get("/io/contacts/jobs/job_other", headers=ALICE).status_code == 503


def test_unshaped_job_ids_are_404_without_touching_storage(gw: Harness) -> None:
    for job_id in ("%00%ff", "job_%20x", "x" * 65):
        result = gw.client.simulate_get(f"/io/contacts/jobs/{job_id}", headers=ALICE)
        assert result.status_code == 404, job_id


def test_falcon_errors_read_as_plain_sentences(gw: Harness) -> None:
    result = gw.client.simulate_put("/io/contacts/contacts", json={}, headers=ALICE)
    assert result.status_code == 405
    assert result.json == {"error": "Method Not Allowed"}


REFUSED_WRITES: list[dict[str, Any]] = [
    {"json": {"email": "nope"}},
    {"body": b"{", "headers": {**ALICE, **JSON}},
    {"body": b"{}", "headers": {**ALICE, "Content-Type": "text/plain"}},
]


@pytest.mark.parametrize("request_kw", REFUSED_WRITES)
def test_refused_writes_still_carry_the_rate_limit_headers(
    gw: Harness, request_kw: dict[str, Any]
) -> None:
    result = gw.client.simulate_post("/io/contacts/contacts", **{"headers": ALICE, **request_kw})
    assert 400 <= result.status_code < 500
    assert result.headers["RateLimit-Policy"] == '"writes";q=200;w=60'
    assert result.headers["RateLimit"].startswith('"writes";r=199;')


def test_metrics_count_answers_by_route_and_code_and_the_rate_limited(gw: Harness) -> None:
    def sample(text: str, name: str, **labels: str) -> float:
        for line in text.splitlines():
            if line.startswith(f"{name}{{") and all(
                f'{k}="{v}"' in line for k, v in labels.items()
            ):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = gw.client.simulate_get("/metrics").text
    limited = make_harness(limit=1)
    limited.post({"email": "a@example.com"})
    limited.post({"email": "b@example.com"})
    gw.post({"email": "bob@example.com"})
    after = gw.client.simulate_get("/metrics")
    assert after.status_code == 200
    assert after.headers["Content-Type"].startswith("text/plain")
    route = {"method": "POST", "route": "/io/contacts/contacts"}
    for code, more in (("202", 2), ("429", 1)):
        grew = sample(after.text, "contacts_gateway_requests_total", **route, code=code) - sample(
            before, "contacts_gateway_requests_total", **route, code=code
        )
        assert grew == more
    assert sample(after.text, "contacts_gateway_rate_limited_total", quota="writes") >= 1
    assert "contacts_gateway_request_duration_seconds_bucket" in after.text


def _nested(levels: int) -> bytes:
    return b'{"email": "bob@example.com", "x": ' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"


@pytest.mark.parametrize("route", ["/io/contacts/contacts", "/io/contacts/contacts/batch"])
def test_a_body_nested_past_64_levels_is_a_400_that_names_the_limit(
    gw: Harness, route: str
) -> None:
    def post(body: bytes) -> Any:
        if route.endswith("batch"):
            body = b'{"contacts": [' + body + b"]}"
        return gw.client.simulate_post(route, body=body, headers={**ALICE, **JSON})

    depth_of_wrapping = 2 if route.endswith("batch") else 0
    assert post(_nested(64 - depth_of_wrapping)).status_code == 202
    for levels in (65, 1000, 3000):
        refused = post(_nested(levels - depth_of_wrapping))
        assert refused.status_code == 400
        assert refused.json["error"] == "Request body must not nest more than 64 levels deep"
    assert len(gw.published) == 1


def test_integers_beyond_64_bits_are_enqueued_exactly_and_overlong_ones_refused(
    gw: Harness,
) -> None:
    def post(number: bytes) -> Any:
        raw = b'{"email": "bob@example.com", "customFields": {"n": ' + number + b"}}"
        return gw.client.simulate_post("/io/contacts/contacts", body=raw, headers={**ALICE, **JSON})

    for number in (b"1" + b"0" * 30, b"-" + b"9" * 400):
        assert post(number).status_code == 202
    assert [job.body["customFields"]["n"] for job in gw.published] == [10**30, -int("9" * 400)]  # type: ignore[index]
    refused = post(b"1" * 4301)
    assert refused.status_code == 400
    assert refused.json["errors"] == [
        {
            "field": "body",
            "message": "Request body must not contain integers of more than 4300 digits",
        }
    ]


def test_an_idempotency_key_tells_bodies_apart_by_their_exact_integers(gw: Harness) -> None:
    def post(number: bytes) -> Any:
        raw = b'{"email": "bob@example.com", "customFields": {"n": ' + number + b"}}"
        headers = {**ALICE, **JSON, "Idempotency-Key": "big-1"}
        return gw.client.simulate_post("/io/contacts/contacts", body=raw, headers=headers)

    first = post(b"100000000000000000000000000001")
    assert first.status_code == 202
    assert post(b"100000000000000000000000000001").headers["Idempotent-Replayed"] == "true"
    # As floats the two would be the same number.
    assert post(b"100000000000000000000000000002").status_code == 422
