"""The Redis transport keeps a message a consumer was handed even if the consumer dies.

Drives the channel at the level where the loss happens: the consumer asks Redis for
a message, Redis hands it over, and the consumer dies before reading the answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu.connection import Connection

from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.infrastructure.transport import Transport
from tests.conftest import unique

pytestmark = pytest.mark.integration


SEP = "\x06\x16"  # kombu's key separator


def inbox_pattern(settings: Settings, queue: str) -> str:
    return f"{settings.redis_key_prefix}inbox{SEP}{queue}{SEP}*"


@pytest.fixture
def connection(settings: Settings) -> Iterator[Connection]:
    with Connection(
        settings.redis_url,
        transport=Transport,
        transport_options={"global_keyprefix": settings.redis_key_prefix, "visibility_timeout": 2},
    ) as conn:
        yield conn


def test_a_message_handed_to_a_consumer_that_dies_goes_back_on_its_queue(
    connection: Connection, settings: Settings, redis_client: redis.Redis
) -> None:
    queue = unique("transport-q")
    stored_queue = f"{settings.redis_key_prefix}{queue}"
    connection.SimpleQueue(queue).put({"job": "precious"})
    assert redis_client.llen(stored_queue) == 1

    doomed = connection.channel()
    doomed.basic_consume(queue, False, lambda message: None, "doomed")
    doomed.client.connection = doomed.client.connection_pool.get_connection()
    doomed._brpop_start()  # Redis hands the message over right away...
    deadline = time.monotonic() + 5
    while redis_client.llen(stored_queue):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    doomed.client.connection.disconnect()  # ...and the consumer dies before reading it.

    inboxes = list(redis_client.scan_iter(inbox_pattern(settings, queue)))
    assert [redis_client.llen(k) for k in inboxes] == [1], "the message must wait in an inbox"

    time.sleep(2.2)  # the dead consumer's heartbeat lapses after a visibility timeout
    survivor = connection.channel()
    survivor.qos.restore_visible()
    assert redis_client.llen(stored_queue) == 1
    message = connection.SimpleQueue(queue).get(timeout=2)
    assert message.payload == {"job": "precious"}
    message.ack()


def test_a_live_consumer_empties_its_inbox_once_the_message_is_recorded(
    connection: Connection, settings: Settings, redis_client: redis.Redis
) -> None:
    queue = unique("transport-q")
    with connection.SimpleQueue(queue) as simple:
        simple.put({"n": 1})
        simple.put({"n": 2})
        payloads = []
        for _ in range(2):
            message = simple.get(timeout=5)
            payloads.append(message.payload)
            message.ack()
    assert payloads == [{"n": 1}, {"n": 2}]
    entries = redis_client.smembers(f"{settings.redis_key_prefix}inboxes")
    registered = {
        (entry.decode() if isinstance(entry, bytes) else entry).split(SEP)[0] for entry in entries
    }
    assert queue in registered, "the consumer took its messages through an inbox"
    # Redis drops empty lists: no inbox key is left holding anything.
    assert list(redis_client.scan_iter(inbox_pattern(settings, queue))) == []


def unacked_tags(settings: Settings, redis_client: redis.Redis) -> set[str]:
    raw = redis_client.hkeys(f"{settings.redis_key_prefix}unacked")
    return {tag.decode() if isinstance(tag, bytes) else tag for tag in raw}


def polled_once(connection: Connection, queue: str, prefetch: int) -> tuple[Any, list[Any]]:
    """A consumer of ``queue`` after one poll of the worker's event loop: its channel and
    the messages that poll delivered."""
    channel = connection.channel()
    channel.basic_qos(0, prefetch, False)
    received: list[Any] = []
    channel.basic_consume(queue, False, received.append, unique("consumer"))
    # The connection the worker's event loop would give the channel for polling.
    channel.client.connection = channel.client.connection_pool.get_connection()
    channel._brpop_start()
    assert channel._brpop_read() is True
    return channel, received


def test_one_poll_takes_as_many_messages_as_the_prefetch_limit_allows(
    connection: Connection, settings: Settings, redis_client: redis.Redis
) -> None:
    queue = unique("transport-q")
    with connection.SimpleQueue(queue) as simple:
        for n in range(10):
            simple.put({"n": n})
    channel, received = polled_once(connection, queue, prefetch=4)
    assert [m.payload["n"] for m in received] == [0, 1, 2, 3]
    # Each was recorded as unacknowledged in the same step that took it off the queue.
    assert {m.delivery_tag for m in received} <= unacked_tags(settings, redis_client)
    assert redis_client.llen(f"{settings.redis_key_prefix}{queue}") == 6

    with channel.qos.acks_together():
        for message in received:
            message.ack()
    assert not {m.delivery_tag for m in received} & unacked_tags(settings, redis_client)
    channel.close()


def test_messages_taken_but_never_acknowledged_come_back_after_the_visibility_timeout(
    connection: Connection, settings: Settings, redis_client: redis.Redis
) -> None:
    queue = unique("transport-q")
    with connection.SimpleQueue(queue) as simple:
        for n in range(3):
            simple.put({"n": n})
    channel, received = polled_once(connection, queue, prefetch=10)
    assert len(received) == 3
    channel.qos._delivered.clear()  # the consumer is gone without a word
    time.sleep(2.2)
    connection.channel().qos.restore_visible()
    with connection.SimpleQueue(queue) as simple:
        again = sorted(simple.get(timeout=2).payload["n"] for _ in range(3))
    assert again == [0, 1, 2]


def test_a_foreign_item_on_the_queue_is_dropped_and_the_rest_delivered(
    connection: Connection, settings: Settings, redis_client: redis.Redis
) -> None:
    queue = unique("transport-q")
    stored_queue = f"{settings.redis_key_prefix}{queue}"
    with connection.SimpleQueue(queue) as simple:
        simple.put({"n": 1})
        redis_client.lpush(stored_queue, b"not a kombu message", b'{"properties": 3}')
        simple.put({"n": 2})
    channel, received = polled_once(connection, queue, prefetch=10)
    assert [m.payload["n"] for m in received] == [1, 2]
    assert redis_client.llen(stored_queue) == 0
    channel.close()


def test_a_consumer_holds_a_bounded_number_of_bytes_not_just_of_messages(
    connection: Connection, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import contacts_ingest.infrastructure.transport as transport

    monkeypatch.setattr(transport, "BYTES_IN_HAND", 350_000)
    queue = unique("transport-q")
    with connection.SimpleQueue(queue) as simple:
        for n in range(5):
            simple.put({"n": n, "pad": "x" * 100_000})  # a bulk job's worth of body
    channel, received = polled_once(connection, queue, prefetch=100)
    assert [m.payload["n"] for m in received] == [0, 1, 2]  # stops once past the budget
    assert not channel.qos.can_consume()
    with channel.qos.acks_together():
        for message in received[:2]:
            message.ack()
    assert channel.qos.can_consume()
    received[2].ack()
    assert channel.qos.bytes_in_hand() == 0  # every message settled: nothing in hand
    channel.close()


def test_a_message_measured_but_never_delivered_is_not_held_in_hand(
    connection: Connection, settings: Settings
) -> None:
    queue = unique("transport-q")
    with connection.SimpleQueue(queue) as simple:
        for n in range(2):
            simple.put({"n": n})
    channel, received = polled_once(connection, queue, prefetch=10)
    # A take measured this one, then its delivery failed before kombu recorded it.
    channel.qos.measured("never-delivered", 40 * 2**20)
    with channel.qos.acks_together():
        for message in received:
            message.ack()
    assert channel.qos.bytes_in_hand() == 0  # else the consumer would take nothing more
    assert channel.qos.can_consume()
    channel.close()


def test_a_consumer_that_acknowledges_nothing_leaves_no_unacked_record(
    connection: Connection, settings: Settings, redis_client: redis.Redis
) -> None:
    # What a control client (celery inspect) does with its replies: no_ack consumption.
    queue = unique("transport-replies")
    with connection.SimpleQueue(queue) as simple:
        for n in range(3):
            simple.put({"n": n})
    before = unacked_tags(settings, redis_client)
    channel = connection.channel()
    received: list[Any] = []
    channel.basic_consume(queue, True, received.append, unique("replies"))
    channel.client.connection = channel.client.connection_pool.get_connection()
    channel._brpop_start()
    assert channel._brpop_read() is True
    assert [m.payload["n"] for m in received] == [0, 1, 2]
    assert unacked_tags(settings, redis_client) == before
    assert not channel.qos._delivered, "nothing is waiting for an acknowledgement"
    channel.close()
