"""The rate limit and job admission against the real Redis: exact, shared, on Redis's clock."""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import replace
from typing import Any

import pytest
import redis
from celery import Celery

from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.jobs.board import Admission, Idempotency, JobBoard, NotReplicated
from contacts_ingest.jobs.job import TASK_NAME, ContactJob, Operation, new_job_id
from tests.conftest import unique

pytestmark = pytest.mark.integration


@pytest.fixture
def queue_settings(settings: Settings) -> Settings:
    """This run's settings with a queue of the test's own, which no worker consumes."""
    return settings.model_copy(update={"celery_queue": unique("admission-q")})


@pytest.fixture
def board(redis_client: redis.Redis, queue_settings: Settings) -> JobBoard:
    return JobBoard.for_settings(redis_client, queue_settings)


def a_job(user: str, operation: Operation = "create") -> ContactJob:
    return ContactJob(new_job_id(), user, operation, {"email": "a@example.com"}, 0)


def admit(board: JobBoard, user: str, limit: tuple[int, int] = (200, 60)) -> Admission:
    job = a_job(user)
    return board.admit(user_id=user, member=job.job_id, job=job, limit=limit)


def test_200_writes_pass_and_the_201st_is_refused_with_retry_after(board: JobBoard) -> None:
    user = unique("user")
    results = [admit(board, user) for _ in range(200)]
    assert all(r.allowed for r in results)
    assert [r.remaining for r in results[-3:]] == [2, 1, 0]
    refused = admit(board, user)
    assert not refused.allowed
    assert 59 <= refused.reset_seconds <= 60
    assert admit(board, unique("user")).allowed


def test_a_refused_write_records_no_job(board: JobBoard) -> None:
    user = unique("user")
    admit(board, user, (1, 60))
    job = a_job(user)
    refused = board.admit(user_id=user, member=job.job_id, job=job, limit=(1, 60))
    assert not refused.allowed
    assert board.pending(job.job_id) is None


def test_the_window_rolls(board: JobBoard) -> None:
    user = unique("user")
    assert admit(board, user, (2, 1)).allowed
    time.sleep(0.5)
    assert admit(board, user, (2, 1)).allowed
    assert not admit(board, user, (2, 1)).allowed
    time.sleep(0.6)  # the first write has left the window, the second has not
    assert admit(board, user, (2, 1)).allowed
    assert not admit(board, user, (2, 1)).allowed


def test_racing_threads_never_get_more_than_the_limit(queue_settings: Settings) -> None:
    user = unique("user")
    pool = redis.ConnectionPool.from_url(queue_settings.redis_url, max_connections=60)
    board = JobBoard.for_settings(redis.Redis(connection_pool=pool), queue_settings)
    for _ in range(190):
        admit(board, user)
    allowed: list[bool] = []
    start = threading.Barrier(50)

    def racer() -> None:
        start.wait()
        allowed.append(admit(board, user).allowed)

    threads = [threading.Thread(target=racer) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert allowed.count(True) == 10


def test_producers_are_admitted_without_counting(board: JobBoard) -> None:
    user = unique("user")
    admit(board, user, (1, 60))
    job = a_job(user, "upsert")
    admission = board.admit(user_id=user, member=job.job_id, job=job, limit=None)
    assert admission.allowed
    pending = board.pending(job.job_id)
    assert pending is not None
    assert (pending["status"], pending["operation"], pending["user_id"]) == (
        "queued",
        "upsert",
        user,
    )


def test_admission_time_is_redis_time(board: JobBoard, redis_client: redis.Redis) -> None:
    seconds, micros = redis_client.time()
    admission = admit(board, unique("user"))
    assert 0 <= admission.accepted_at_us - (seconds * 1_000_000 + micros) < 5_000_000


def queued(redis_client: redis.Redis, settings: Settings) -> list[dict[str, Any]]:
    """The job messages on the settings' queue, oldest first."""
    key = f"{settings.redis_key_prefix}{settings.celery_queue}"
    return [json.loads(raw) for raw in reversed(redis_client.lrange(key, 0, -1))]


def test_racing_requests_with_one_idempotency_key_admit_exactly_one(
    board: JobBoard, redis_client: redis.Redis, queue_settings: Settings
) -> None:
    user = unique("user")
    key = Idempotency(key_hash=unique("k"), fingerprint="f")
    verdicts: list[str] = []
    originals: set[Any] = set()
    barrier = threading.Barrier(20)

    def racer() -> None:
        job = a_job(user)
        barrier.wait()
        admission = board.admit(
            user_id=user, member=job.job_id, job=job, limit=(200, 60), idempotency=key
        )
        verdicts.append(admission.idempotency)
        originals.add(admission.original or (job.job_id, job.operation))

    threads = [threading.Thread(target=racer) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Admission records the key and queues the job at once: every repeat is a replay.
    assert sorted(verdicts) == ["new"] + ["replay"] * 19
    [(admitted, _)] = originals
    [message] = queued(redis_client, queue_settings)
    assert message["headers"]["id"] == admitted
    # Only the admitted request counted against the quota.
    assert admit(board, user).remaining == 198


def test_an_idempotency_key_lives_24_hours_once_accepted(
    board: JobBoard, redis_client: redis.Redis
) -> None:
    user = unique("user")
    key = Idempotency(key_hash=unique("k"), fingerprint="f")
    job = a_job(user)
    board.admit(user_id=user, member=job.job_id, job=job, limit=None, idempotency=key)
    record = board.idempotency_key(user, key.key_hash)
    assert 23 * 3600 < redis_client.ttl(record) <= 24 * 3600


def test_a_hand_built_message_matches_what_celery_publishes(
    board: JobBoard, redis_client: redis.Redis, queue_settings: Settings
) -> None:
    import celeryconfig

    user = unique("user")
    job = ContactJob("job_" + "1" * 32, user, "upsert", {"email": "m@example.com", "n": 2**70},
                     0, "req_1")  # fmt: skip
    admission = board.admit(user_id=user, member=job.job_id, job=job, limit=None)
    # What Celery itself sends for the same task call, configured as the workers are.
    celery = Celery("contacts-ingest")
    celery.config_from_object(celeryconfig)
    celery.conf.update(celeryconfig.from_settings(queue_settings))
    celery.send_task(
        TASK_NAME,
        kwargs={"job": replace(job, accepted_at_us=admission.accepted_at_us).to_message()},
        task_id=job.job_id,
        queue=queue_settings.celery_queue,
        headers={"request_id": job.request_id},
        argsrepr="()",
        kwargsrepr=f"{{job_id: {job.job_id}}}",
    )
    built, published = queued(redis_client, queue_settings)
    decoded = json.loads(base64.b64decode(published["body"]))
    assert json.loads(built["body"]) == decoded  # the same task call, acceptance time included
    assert decoded[1]["job"]["accepted_at_us"] == admission.accepted_at_us
    assert set(built) == set(published)
    assert {k: v for k, v in built["headers"].items() if k != "origin"} == {
        k: v for k, v in published["headers"].items() if k != "origin"
    }
    ignored = {"reply_to", "delivery_tag", "body_encoding"}
    assert {k: v for k, v in built["properties"].items() if k not in ignored} == {
        k: v for k, v in published["properties"].items() if k not in ignored
    }


@pytest.fixture
def replicated_board(redis_client: redis.Redis, queue_settings: Settings) -> JobBoard:
    """A board that wants one replica's word for each job, on a Redis that has none."""
    if redis_client.info("replication")["connected_slaves"]:
        pytest.skip("this Redis has replicas")
    settings = queue_settings.model_copy(
        update={"redis_min_replicas_ack": 1, "redis_replicas_ack_timeout_ms": 20}
    )
    return JobBoard.for_settings(redis_client, settings)


def test_a_job_no_replica_confirmed_is_reported_and_may_be_queued(
    replicated_board: JobBoard,
) -> None:
    user = unique("user")
    job = a_job(user)
    with pytest.raises(NotReplicated) as raised:
        replicated_board.admit(user_id=user, member=job.job_id, job=job, limit=(200, 60))
    assert raised.value.job_id == job.job_id
    # Not confirmed is not refused: the master holds it.
    assert replicated_board.pending(job.job_id) is not None


def test_the_replay_of_an_unconfirmed_job_is_not_confirmed_either(
    replicated_board: JobBoard, board: JobBoard
) -> None:
    user = unique("user")
    key = Idempotency("key-hash", "fingerprint")
    first = a_job(user)
    assert board.admit(
        user_id=user, member=first.job_id, job=first, limit=(200, 60), idempotency=key
    ).allowed
    again = a_job(user)
    with pytest.raises(NotReplicated) as raised:
        replicated_board.admit(
            user_id=user, member=again.job_id, job=again, limit=(200, 60), idempotency=key
        )
    assert raised.value.job_id == first.job_id
    assert replicated_board.pending(again.job_id) is None


def test_a_refused_request_needs_no_replica(replicated_board: JobBoard) -> None:
    user = unique("user")
    job = a_job(user)
    refused = replicated_board.admit(user_id=user, member=job.job_id, job=None, limit=(200, 60))
    assert refused.allowed
    assert replicated_board.pending(job.job_id) is None
