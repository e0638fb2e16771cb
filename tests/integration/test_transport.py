"""The Redis transport keeps a message a consumer was handed even if the consumer dies.

Drives the channel at the level where the loss happens: the consumer asks Redis for
a message, Redis hands it over, and the consumer dies before reading the answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from kombu.connection import Connection

from contacts_ingest.settings import Settings
from contacts_ingest.transport import Transport
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
