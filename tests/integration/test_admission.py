"""The rate limit and job admission against the real Redis: exact, shared, on Redis's clock."""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import replace

import pytest
import redis

from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.jobs.board import Admission, ContactJob, Idempotency, JobBoard, new_job_id
from contacts_ingest.jobs.messages import CeleryMessages
from contacts_ingest.producer import CeleryPublisher, producer_celery
from tests.conftest import unique

pytestmark = pytest.mark.integration


@pytest.fixture
def board(redis_client: redis.Redis, settings: Settings) -> JobBoard:
    return JobBoard.for_settings(redis_client, settings)


def admit(board: JobBoard, user: str, limit: tuple[int, int] = (200, 60)) -> Admission:
    job_id = new_job_id()
    return board.admit(user_id=user, member=job_id, job=(job_id, "create"), limit=limit)


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
    job_id = new_job_id()
    refused = board.admit(user_id=user, member=job_id, job=(job_id, "create"), limit=(1, 60))
    assert not refused.allowed
    assert board.pending(job_id) is None


def test_the_window_rolls(board: JobBoard) -> None:
    user = unique("user")
    assert admit(board, user, (2, 1)).allowed
    time.sleep(0.5)
    assert admit(board, user, (2, 1)).allowed
    assert not admit(board, user, (2, 1)).allowed
    time.sleep(0.6)  # the first write has left the window, the second has not
    assert admit(board, user, (2, 1)).allowed
    assert not admit(board, user, (2, 1)).allowed


def test_racing_threads_never_get_more_than_the_limit(settings: Settings) -> None:
    user = unique("user")
    pool = redis.ConnectionPool.from_url(settings.redis_url, max_connections=60)
    board = JobBoard.for_settings(redis.Redis(connection_pool=pool), settings)
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
    job_id = new_job_id()
    admission = board.admit(user_id=user, member=job_id, job=(job_id, "upsert"), limit=None)
    assert admission.allowed
    pending = board.pending(job_id)
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


def test_racing_requests_with_one_idempotency_key_admit_exactly_one(board: JobBoard) -> None:
    user = unique("user")
    key = Idempotency(key_hash=unique("k"), fingerprint="f")
    verdicts: list[str] = []
    job_ids: list[str] = []
    barrier = threading.Barrier(20)

    def racer() -> None:
        job_id = new_job_id()
        barrier.wait()
        admission = board.admit(
            user_id=user, member=job_id, job=(job_id, "create"), limit=(200, 60), idempotency=key
        )
        verdicts.append(admission.idempotency)
        if admission.allowed:
            job_ids.append(job_id)

    threads = [threading.Thread(target=racer) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(verdicts) == ["in_progress"] * 19 + ["new"]
    [admitted] = job_ids
    board.settle(user, key, admitted)
    replay = board.admit(
        user_id=user, member=new_job_id(), job=(new_job_id(), "create"), limit=(200, 60),
        idempotency=key,
    )  # fmt: skip
    assert (replay.idempotency, replay.original) == ("replay", (admitted, "create"))
    # Only the admitted request counted against the quota.
    assert admit(board, user).remaining == 198


def test_an_idempotency_key_lives_24_hours_once_accepted(
    board: JobBoard, redis_client: redis.Redis
) -> None:
    user = unique("user")
    key = Idempotency(key_hash=unique("k"), fingerprint="f")
    job_id = new_job_id()
    board.admit(user_id=user, member=job_id, job=(job_id, "create"), limit=None, idempotency=key)
    record = board.idempotency_key(user, key.key_hash)
    assert 0 < redis_client.ttl(record) <= 60  # reserved briefly while being accepted
    board.settle(user, key, job_id)
    assert 23 * 3600 < redis_client.ttl(record) <= 24 * 3600


def test_a_hand_built_message_matches_what_celery_publishes(
    board: JobBoard, redis_client: redis.Redis, settings: Settings
) -> None:
    queue = unique("contacts-messages")
    local = settings.model_copy(update={"celery_queue": queue})
    user = unique("user")
    job = ContactJob("job_" + "1" * 32, user, "upsert", {"email": "m@example.com", "n": 2**70},
                     0, "req_1")  # fmt: skip
    admission = board.admit(
        user_id=user, member=job.job_id, job=(job.job_id, "upsert"), limit=None,
        enqueue=CeleryMessages(local)(job),
    )  # fmt: skip
    CeleryPublisher(producer_celery(local), queue)(
        replace(job, accepted_at_us=admission.accepted_at_us)
    )
    published, built = (
        json.loads(raw) for raw in redis_client.lrange(f"{settings.redis_key_prefix}{queue}", 0, -1)
    )
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
