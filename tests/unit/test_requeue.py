"""An operator's retry of a dead-lettered job, on the Redis side (fakeredis, real scripts)."""

from __future__ import annotations

import json

from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.jobs.board import JobBoard
from contacts_ingest.jobs.callbacks import CallbackRoute
from contacts_ingest.jobs.job import ContactJob
from tests.unit.fake_redis import FakeRedis
from tests.unit.harness import queued_jobs


def test_a_retried_job_is_queued_under_its_own_id_and_time_pending_and_called_back() -> None:
    settings = Settings(redis_key_prefix="t:", celery_queue="q")
    client = FakeRedis()
    board = JobBoard.for_settings(client, settings)
    job = ContactJob("job_dead", "u1", "upsert", {"email": "a@example.com"}, 1_700_000_000_123_456)
    board.requeue(job, 3600, CallbackRoute("key_1", "https://receiver.example"))

    [queued] = queued_jobs(client, "t:q")
    assert queued.job_id == "job_dead"
    assert queued.accepted_at_us == 1_700_000_000_123_456  # not Redis's clock now
    assert queued.retry
    message = json.loads(client.lindex("t:q", 0))  # type: ignore[arg-type]
    assert message["headers"]["id"] == "job_dead"
    assert board.pending("job_dead") == {
        "user_id": "u1", "operation": "upsert", "status": "queued",
        "accepted_at_us": "1700000000123456", "attempts": "0",
        "callback": "key_1", "callback_lane": "https://receiver.example",
    }  # fmt: skip
    assert client.zscore(board.pending_index_key("u1"), "job_dead") == 1_700_000_000_123_456

    board.forget("job_dead")  # its new outcome committed
    assert client.zscore(board.pending_index_key("u1"), "job_dead") is None
    assert client.hget("t:callback:job_dead", "owner") == b"key_1"
