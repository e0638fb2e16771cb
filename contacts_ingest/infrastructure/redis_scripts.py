"""Our Lua scripts for Redis, each headed by Redis 7's flags line (``#!lua flags=...``).

The flags say whether Redis runs a script while it is over its maxmemory (the
README's Bounded admission). Redis before 7.0 cannot read that line (it is a Lua
syntax error there): for such a server, such as the embedded Redis 6.2 that
``contacts-ingest dev`` runs (without a memory limit), the line is left out, and the
server decides at a script's first write command, as it always did.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Sequence
from typing import Any
from weakref import WeakKeyDictionary

import redis
from redis.exceptions import NoScriptError

# The first Redis version that reads a script's flags line.
FLAGS_SINCE = 7
_reads_flags: WeakKeyDictionary[redis.Redis, bool] = WeakKeyDictionary()


def reads_flags(client: redis.Redis) -> bool:
    """Whether the server behind ``client`` reads a script's flags line (asked once)."""
    known = _reads_flags.get(client)
    if known is None:
        version = str(client.info("server")["redis_version"])
        known = _reads_flags[client] = int(version.split(".")[0]) >= FLAGS_SINCE
    return known


class RedisScript:
    """A script registered on ``client`` the first time it runs, with its flags line if
    the server reads it. Called like redis-py's ``Script`` (``client`` may be a
    pipeline of the same server).

    Called on its own (not in a pipeline), it runs on a connection of its own, made as
    ``client``'s pool makes its own (so with the client's address, credentials,
    timeouts, retry policy and connection class) and kept for the next call: one
    EVALSHA written and its reply read, without the client's per-command layers, which
    cost a request to the gateway as much CPU as the round trip itself. As with the
    pool, a connection the server closed while it was idle is opened afresh before it
    is used; a server that lost the script (restarted, or a new master) is given it
    again and the call repeated.
    """

    def __init__(self, client: redis.Redis, text: str) -> None:
        self._client = client
        self._text = text
        self._script: Any = None
        self._sha = ""
        # Connections between calls, and the process they belong to (none survives a fork).
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pid = os.getpid()

    def __call__(
        self, keys: Sequence[Any] = (), args: Sequence[Any] = (), client: Any = None
    ) -> Any:
        script = self._registered()
        if client is not None:
            # redis-py loads the script again where the server answers NOSCRIPT (a
            # promoted replica, a restarted server), before a pipeline's first use too.
            return script(keys=keys, args=args, client=client)
        connection = self._connection()
        try:
            return connection.retry.call_with_retry(
                lambda: self._run(connection, keys, args), lambda _: connection.disconnect()
            )
        finally:
            self._idle.put(connection)

    def replicated(
        self,
        keys: Sequence[Any],
        args: Sequence[Any],
        *,
        replicas: int,
        timeout_ms: int,
        probe: str,
    ) -> tuple[Any, int]:
        """Run the script, then WAIT until ``replicas`` replicas have everything the
        master held by then (or ``timeout_ms`` passed), in one round trip: (the script's
        reply, how many replicas acknowledged it).

        WAIT counts only its connection's own last write; a PUBLISH on ``probe`` (a
        channel no one listens on) before it is a write that makes it count all of
        them, an earlier request's that this one repeats included.
        """
        script = self._registered()

        def then_wait() -> tuple[Any, int]:
            pipe = self._client.pipeline(transaction=False)
            pipe.evalsha(script.sha, len(keys), *keys, *args)
            pipe.publish(probe, b"")
            pipe.wait(replicas, timeout_ms)
            reply, _, acknowledged = pipe.execute()
            return reply, int(acknowledged)

        try:
            return then_wait()
        except redis.exceptions.NoScriptError:
            # The server does not know it (a promoted replica): it ran nothing.
            script.sha = self._client.script_load(script.script)
            return then_wait()

    def _registered(self) -> Any:
        if self._script is None:
            text = self._text
            if text.startswith("#!") and not reads_flags(self._client):
                text = text.split("\n", 1)[1]
            script = self._client.register_script(text)
            # Its name first: another thread takes a registered script as ready to run.
            self._sha = script.sha
            self._script = script
        return self._script

    def _connection(self) -> Any:  # a redis-py connection (its methods are untyped)
        if self._pid != os.getpid():
            self._idle, self._pid = queue.SimpleQueue(), os.getpid()
        try:
            connection = self._idle.get_nowait()
        except queue.Empty:
            # Made as the pool makes its own, but not counted against its
            # max_connections: the pool never gets these back to count them out.
            pool = self._client.connection_pool
            connection = pool.connection_class(**pool.connection_kwargs)
        # As the client's pool does at every checkout: a connection the server closed
        # while it was idle (or one left with a reply unread) is opened afresh first.
        connection.connect()
        try:
            if connection.can_read():
                raise redis.ConnectionError("Connection has data")
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            connection.disconnect()
            connection.connect()
        return connection

    def _run(self, connection: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        connection.send_command("EVALSHA", self._sha, len(keys), *keys, *args)
        try:
            return connection.read_response()
        except NoScriptError:
            connection.send_command("SCRIPT", "LOAD", self._script.script)
            connection.read_response()
            connection.send_command("EVALSHA", self._sha, len(keys), *keys, *args)
            return connection.read_response()
