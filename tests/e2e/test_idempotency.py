"""Idempotency-Key through the real gateway and worker."""

from __future__ import annotations

import pytest
import requests
from sqlalchemy import Engine, func, select

from contacts_ingest.infrastructure.schema import contact_jobs
from tests.e2e.conftest import Service

pytestmark = pytest.mark.e2e


def test_a_client_retrying_with_its_idempotency_key_gets_one_job(
    service: Service, engine: Engine
) -> None:
    user, auth = service.new_user()
    headers = {**auth, "Idempotency-Key": "signup-8e03978e"}
    body = {"email": "retry@example.com", "firstName": "Rita"}
    answers = [service.post(headers, body) for _ in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 202]
    job_ids = {a.json()["data"]["job_id"] for a in answers}
    assert len(job_ids) == 1
    assert [a.headers.get("Idempotent-Replayed") for a in answers] == [None, "true", "true"]
    [job_id] = job_ids
    assert service.wait_final(auth, job_id)["result"]["code"] == 201
    # After the job is final, a repeat still returns it, and a different body is refused.
    assert service.post(headers, body).json()["data"]["job_id"] == job_id
    other = service.post(headers, {**body, "firstName": "Other"})
    assert (other.status_code, other.json()["type"]) == (422, "/problems/idempotency-key-reused")
    with engine.connect() as conn:
        jobs = conn.execute(
            select(func.count()).select_from(contact_jobs).where(contact_jobs.c.user_id == user)
        ).scalar_one()
    assert jobs == 1


def test_idempotency_keys_do_not_cross_users(service: Service) -> None:
    _, alice = service.new_user()
    _, bob = service.new_user()
    body = {"email": "same@example.com"}
    a = service.post({**alice, "Idempotency-Key": "k"}, body).json()["data"]["job_id"]
    b = service.post({**bob, "Idempotency-Key": "k"}, body).json()["data"]["job_id"]
    assert a != b
    assert (
        requests.get(f"{service.base}/io/contacts/jobs/{a}", headers=bob, timeout=5).status_code
        == 404
    )


def test_every_answer_to_a_keyed_post_carries_the_rate_limit_headers(service: Service) -> None:
    _, auth = service.new_user()
    headers = {**auth, "Idempotency-Key": "headers-1"}
    body = {"email": "headers@example.com"}
    first = service.post(headers, body)
    replay = service.post(headers, body)
    reused = service.post(headers, {"email": "other@example.com"})
    after = service.post(auth, {"email": "after@example.com"})
    assert [a.status_code for a in (first, replay, reused, after)] == [202, 202, 422, 202]
    remaining = [a.headers["RateLimit"].split(";")[1] for a in (first, replay, reused, after)]
    # The replay counts nothing; the 422 counts like any other authenticated POST.
    assert remaining == ["r=199", "r=199", "r=198", "r=197"]
    assert all(a.headers["RateLimit-Policy"] == '"writes";q=200;w=60' for a in (replay, reused))
