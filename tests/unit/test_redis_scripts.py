"""A script called on its own is given to a server that lost it (restarted, or a new
master after a failover), and the call repeated: the caller never sees NOSCRIPT."""

from __future__ import annotations

import fakeredis

from contacts_ingest.infrastructure.redis_scripts import RedisScript


def test_a_script_the_server_forgot_is_loaded_again_and_answers() -> None:
    client = fakeredis.FakeRedis()
    script = RedisScript(client, "redis.call('INCR', KEYS[1]) return redis.call('GET', KEYS[1])")
    assert script(keys=["runs"]) == b"1"
    client.script_flush()
    assert script(keys=["runs"]) == b"2"  # run once more, not twice
    assert client.get("runs") == b"2"


def test_a_script_in_a_pipeline_runs_with_the_pipeline() -> None:
    client = fakeredis.FakeRedis()
    script = RedisScript(client, "return redis.call('INCRBY', KEYS[1], ARGV[1])")
    pipe = client.pipeline(transaction=False)
    script(keys=["n"], args=[2], client=pipe)
    script(keys=["n"], args=[3], client=pipe)
    assert client.get("n") is None  # nothing ran before execute
    assert pipe.execute() == [2, 5]
