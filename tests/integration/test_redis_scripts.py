"""Scripts called on their own keep connections of their own: against the real Redis,
they survive a dropped connection, and a forked process never shares one."""

from __future__ import annotations

import multiprocessing
import threading

import pytest
import redis

from contacts_ingest.infrastructure.redis_scripts import RedisScript
from tests.conftest import unique

pytestmark = pytest.mark.integration

ECHO = "return ARGV[1] .. ':' .. KEYS[1]"


def named_client(redis_url: str, name: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, client_name=name, socket_timeout=5)


def test_a_script_answers_again_after_its_connection_is_killed(redis_url: str) -> None:
    name = unique("script-conn")
    script = RedisScript(named_client(redis_url, name), ECHO)
    assert script(keys=["k"], args=["before"]) == b"before:k"
    admin = redis.Redis.from_url(redis_url)
    ids = [c["id"] for c in admin.client_list() if c.get("name") == name]
    assert ids, "the script's connection is open and carries the client's name"
    for client_id in ids:
        admin.client_kill_filter(_id=client_id)
    assert script(keys=["k"], args=["after"]) == b"after:k"


def test_a_forked_process_gets_connections_of_its_own(redis_url: str) -> None:
    name = unique("script-fork")
    script = RedisScript(named_client(redis_url, name), ECHO)
    assert script(keys=["parent"], args=["0"]) == b"0:parent"  # a connection exists now
    fork = multiprocessing.get_context("fork")
    results = fork.SimpleQueue()

    def child() -> None:
        results.put([script(keys=["child"], args=[str(i)]) for i in range(300)])

    # The child calls the script object it inherited while the parent calls it too:
    # one socket shared by both would hand replies to the wrong caller.
    process = fork.Process(target=child)
    process.start()
    parent = [script(keys=["parent"], args=[str(i)]) for i in range(300)]
    process.join(timeout=60)
    assert process.exitcode == 0
    assert results.get() == [f"{i}:child".encode() for i in range(300)]
    assert parent == [f"{i}:parent".encode() for i in range(300)]


def test_many_scripts_on_one_client_never_exhaust_its_pool(redis_url: str) -> None:
    # redis-py's pool allows 100 connections by default; every job board has several
    # scripts, and a process may build many boards on one client over its life.
    client = redis.Redis.from_url(redis_url)
    scripts = [RedisScript(client, ECHO) for _ in range(150)]
    assert [s(keys=["k"], args=[str(i)]) for i, s in enumerate(scripts)] == [
        f"{i}:k".encode() for i in range(150)
    ]
    assert client.ping()  # the client's own pool still has room


def test_a_call_while_another_thread_registers_the_script_answers(redis_url: str) -> None:
    # Many gateway threads make the first calls at once: one may look at the script the
    # moment another has just registered it, and must find it whole.
    answers: list[object] = []

    class Interleaved(RedisScript):
        def __setattr__(self, name: str, value: object) -> None:
            super().__setattr__(name, value)
            if name == "_script" and value is not None and not answers:
                other = threading.Thread(target=lambda: answers.append(self._call_or_error()))
                other.start()
                other.join(timeout=30)

        def _call_or_error(self) -> object:
            try:
                return self(keys=["other"], args=["second"])
            except redis.RedisError as exc:
                return exc

    script = Interleaved(named_client(redis_url, unique("script-race")), ECHO)
    assert script(keys=["first"], args=["one"]) == b"one:first"
    assert answers == [b"second:other"]
