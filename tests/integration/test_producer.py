"""The internal producer's idempotency keys, against the real Redis: a call repeated
after an error is answered with the job it had queued, never a second one."""

from __future__ import annotations

import pytest
import redis

from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.jobs.board import NotReplicated
from contacts_ingest.producer import ContactProducer, IdempotencyKeyReused
from tests.conftest import unique

pytestmark = pytest.mark.integration


@pytest.fixture
def queue_settings(settings: Settings) -> Settings:
    """This run's settings with a queue of the test's own, which no worker consumes."""
    return settings.model_copy(update={"celery_queue": unique("producer-q")})


def queued(redis_client: redis.Redis, settings: Settings) -> int:
    return int(redis_client.llen(f"{settings.redis_key_prefix}{settings.celery_queue}"))


def test_a_repeated_call_with_its_key_is_answered_with_the_first_job(
    queue_settings: Settings, redis_client: redis.Redis
) -> None:
    producer = ContactProducer(queue_settings)
    user = unique("user")
    first = producer.enqueue(user, {"email": "a@example.com"}, idempotency_key="signup-1")
    again = producer.enqueue(user, {"email": "a@example.com"}, idempotency_key="signup-1")
    assert again == first
    batch = producer.enqueue_batch(user, [{"email": "b@example.com"}], idempotency_key="b-1")
    assert producer.enqueue_batch(user, [{"email": "b@example.com"}], idempotency_key="b-1") == (
        batch
    )
    assert queued(redis_client, queue_settings) == 2
    # Keys are the user's: another user's same key is another job.
    other = producer.enqueue(unique("user"), {"email": "a@example.com"}, idempotency_key="signup-1")
    assert other != first
    # Without a key every call is a job of its own.
    assert producer.enqueue(user, {"email": "a@example.com"}) != first
    assert queued(redis_client, queue_settings) == 4


@pytest.mark.parametrize(
    ("body", "upsert"),
    [({"email": "other@example.com"}, False), ({"email": "a@example.com"}, True)],
)
def test_a_key_used_for_another_job_is_refused(
    queue_settings: Settings, redis_client: redis.Redis, body: dict[str, str], upsert: bool
) -> None:
    producer = ContactProducer(queue_settings)
    user = unique("user")
    producer.enqueue(user, {"email": "a@example.com"}, idempotency_key="k")
    with pytest.raises(IdempotencyKeyReused):
        producer.enqueue(user, body, upsert=upsert, idempotency_key="k")
    assert queued(redis_client, queue_settings) == 1


def test_an_unconfirmed_job_retried_with_its_key_stays_one_job(
    queue_settings: Settings, redis_client: redis.Redis
) -> None:
    if redis_client.info("replication")["connected_slaves"]:
        pytest.skip("this Redis has replicas")
    wanting = queue_settings.model_copy(
        update={"redis_min_replicas_ack": 1, "redis_replicas_ack_timeout_ms": 20}
    )
    user = unique("user")
    body = {"email": "unconfirmed@example.com"}
    with pytest.raises(NotReplicated) as first:
        ContactProducer(wanting).enqueue(user, body, idempotency_key="u-1")
    with pytest.raises(NotReplicated) as second:
        ContactProducer(wanting).enqueue(user, body, idempotency_key="u-1")
    assert second.value.job_id == first.value.job_id
    # Once confirmed (here: by a producer that asks for no replica) it is that job.
    assert ContactProducer(queue_settings).enqueue(user, body, idempotency_key="u-1") == (
        first.value.job_id
    )
    assert queued(redis_client, queue_settings) == 1
