"""REDIS_MIN_REPLICAS_ACK through the real gateway, on a Redis without replicas: no 202
without the replicas' word, and a retry with the same Idempotency-Key stays one job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from api_gateway.app import NOT_REPLICATED_MESSAGE
from contacts_ingest.infrastructure.settings import Settings
from tests.e2e.conftest import Service, start_gateway

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def wanting_a_replica(service: Service, settings: Settings, log_dir: Path) -> Iterator[str]:
    """A second gateway on the same Redis and queue that wants one replica per job."""
    if redis.Redis.from_url(settings.redis_url).info("replication")["connected_slaves"]:
        pytest.skip("this Redis has replicas")
    env = {**service.env, "REDIS_MIN_REPLICAS_ACK": "1", "REDIS_REPLICAS_ACK_TIMEOUT_MS": "50"}
    process, base = start_gateway(env, log_dir)
    yield base
    process.stop()


def test_an_admission_no_replica_confirmed_is_a_503_and_its_retry_is_the_same_job(
    service: Service, wanting_a_replica: str
) -> None:
    _, auth = service.new_user()
    headers = {**auth, "Idempotency-Key": "unconfirmed-1"}
    body = {"email": "unconfirmed@example.com"}
    refused = requests.post(
        f"{wanting_a_replica}/io/contacts/contacts", json=body, headers=headers, timeout=10
    )
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "2"
    assert refused.json() == {"error": NOT_REPLICATED_MESSAGE}
    # It was queued nonetheless; the retry (here through a gateway that does not wait for
    # replicas) is answered with that job, which ends once.
    retried = service.post(headers, body)
    assert retried.status_code == 202
    assert retried.headers["Idempotent-Replayed"] == "true"
    job_id = retried.json()["data"]["job_id"]
    assert service.wait_final(auth, job_id)["result"]["code"] == 201
    again = requests.post(
        f"{wanting_a_replica}/io/contacts/contacts", json=body, headers=headers, timeout=10
    )
    assert (again.status_code, again.json()) == (503, {"error": NOT_REPLICATED_MESSAGE})


def test_readyz_says_new_jobs_are_refused_while_too_few_replicas_are_connected(
    service: Service, wanting_a_replica: str
) -> None:
    wanting = requests.get(f"{wanting_a_replica}/readyz", timeout=10)
    assert wanting.status_code == 200  # job reads and replays are still answered
    assert wanting.json()["admission"] == "too few replicas"
    assert wanting.json()["status"] == "shedding"
    # The gateway that asks for no replica admits as before.
    plain = requests.get(f"{service.base}/readyz", timeout=10).json()
    assert (plain["status"], plain["admission"]) == ("ready", "ok")
