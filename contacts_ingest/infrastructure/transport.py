"""kombu's Redis transport, with consumers that cannot lose the message they are handed.

Stock kombu takes a message with BRPOP and only afterwards records it as
unacknowledged: a consumer killed in between loses the message for good. Here a
consumer of a single queue takes it with BLMOVE into an inbox list of its own, in
the same step Redis removes it from the queue, and clears the inbox once kombu
has recorded the message as unacknowledged. Inboxes of consumers that stopped
refreshing their heartbeat for a visibility timeout are moved back onto their
queue by any live consumer.

A message can therefore come back twice (from the inbox and from the unacked
record); contact jobs are idempotent by job id, so that costs only a no-op delivery.

Messages are also taken many at a time: once BLMOVE hands over one, a script moves
it and as many more as the prefetch limit allows from the queue into the unacked
record, in one step and one round trip; and acknowledgements given together
(``QoS.acks_together``) go to Redis in one pipeline. Taking, recording, clearing the
inbox and acknowledging had cost four round trips per message, which held a worker to
a few hundred jobs a second.

A consumer also drains a Redis that is over its maxmemory (admissions are refused
then): its scripts are flagged to run regardless (they move messages or free memory),
and when Redis refuses BLMOVE, which could grow memory, it takes straight from the
queue with the take script instead. What Redis still refuses then (kombu's sweep lock,
handing a message back, recording a queue's binding) is logged and left until Redis is
under its limit again.

Under Redis Sentinel (``REDIS_SENTINELS``), ``SentinelTransport`` is the same
transport on the master Sentinel names: its connections ask the sentinels for the
master each time they connect, so once a connection to a failed master breaks, the
worker's reconnect finds the promoted one.

Celery selects one with ``broker_transport`` (see celeryconfig.py).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from time import monotonic, sleep, time
from typing import Any

import orjson
import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.transport.virtual import Empty
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from redis.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection

from contacts_ingest.infrastructure.redis_clients import master_pool
from contacts_ingest.infrastructure.redis_scripts import RedisScript

logger = logging.getLogger(__name__)


def _script(name: str) -> str:
    return (Path(__file__).parent / f"{name}.lua").read_text()


# Taking many messages at once, recorded as unacknowledged in the same step.
_TAKE_SCRIPT = _script("take")
_HEARTBEAT_SCRIPT = _script("heartbeat")
_ACK_SCRIPT = _script("ack")
_RECLAIM_SCRIPT = _script("reclaim")

# The most messages one take moves at once (the prefetch limit may lower it).
TAKE_AT_MOST = 500
# The most message bytes a consumer holds unacknowledged: past it, it takes no more
# until some are settled (the prefetch limit counts messages, and a bulk job's message
# can be 10 MiB).
BYTES_IN_HAND = 32 * 2**20

# While Redis is over maxmemory and the queue is empty, how long a consumer waits before
# it looks again (it cannot block on the queue then: Redis refuses BLMOVE).
OUT_OF_MEMORY_POLL_SECONDS = 0.5

# What Redis calls raise once the connection is lost, or once kombu released it (the
# channel of a message delivered before a reconnect has no connection any more).
_CONNECTION_GONE = (AttributeError, redis.RedisError, OSError)


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS, except that losing Redis never takes the worker down.

    Acknowledging, rejecting or handing back a message needs Redis. When it is gone,
    kombu raises from deep inside the worker's event loop and Celery stops the worker
    ("Unrecoverable error"), even though nothing is at risk: the message is still in
    the unacked hash, and any live worker restores it after the visibility timeout.
    Here such a failure is logged and the message is left to that.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Delivery tags the take script already recorded as unacknowledged.
        self.recorded: set[str] = set()
        self._deferred: list[str] | None = None
        # Delivery tag -> bytes, of the messages in hand, and their sum.
        self._sizes: dict[str, int] = {}
        self._in_hand = 0

    def measured(self, delivery_tag: str, size: int) -> None:
        """Count ``size`` bytes in hand for a message about to be delivered."""
        self._in_hand += size - self._sizes.get(delivery_tag, 0)
        self._sizes[delivery_tag] = size

    def bytes_in_hand(self) -> int:
        """Bytes of the messages delivered and not yet settled (as stored in Redis when
        the take script took them, else their body)."""
        self._settled(self._dirty)
        # What is left measured is what kombu holds unsettled, unless a message left its
        # books unsettled (restored) or never reached them (measured, then not delivered).
        if len(self._sizes) > len(self._delivered) - len(self._dirty):
            self._settled(
                [tag for tag in self._sizes if tag not in self._delivered or tag in self._dirty]
            )
        return self._in_hand

    def _settled(self, tags: Iterable[str]) -> None:
        for tag in tags:
            size = self._sizes.pop(tag, None)
            if size is not None:
                self._in_hand -= size

    def _flush(self) -> None:
        self._settled(self._dirty)  # kombu forgets these now
        super()._flush()

    def can_consume(self) -> bool:
        return bool(super().can_consume()) and self.bytes_in_hand() < BYTES_IN_HAND

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag not in self._sizes:  # the take script's messages come measured
            body = getattr(message, "body", b"")
            self.measured(delivery_tag, len(body) if isinstance(body, (bytes, str)) else 0)
        if delivery_tag in self.recorded:
            self.recorded.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)  # in memory only: Redis has it
            return
        super().append(message, delivery_tag)

    @contextmanager
    def acks_together(self) -> Iterator[None]:
        """Acknowledgements given inside reach Redis at the end, in one round trip."""
        self._deferred = []
        try:
            yield
        finally:
            tags, self._deferred = self._deferred, None
            if tags:
                self._ack_all(tags)

    def ack(self, delivery_tag: str) -> None:
        if self._deferred is not None:
            self._deferred.append(delivery_tag)
            return
        self._ack_all([delivery_tag])

    def _ack_all(self, tags: list[str]) -> None:
        channel = self.channel
        try:
            if isinstance(channel, Channel):
                channel.remove_unacked(tags, self.unacked_key, self.unacked_index_key)
            else:
                with channel.conn_or_acquire() as client:
                    pipe = client.pipeline()
                    for tag in tags:
                        self._remove_from_indices(tag, pipe)
                    pipe.execute()
        except _CONNECTION_GONE as exc:
            for tag in tags:
                self._leave_to_redelivery(tag, "acknowledge", exc)
            return
        for tag in tags:
            virtual.QoS.ack(self, tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        try:
            super().reject(delivery_tag, requeue=requeue)
        except _CONNECTION_GONE as exc:
            self._leave_to_redelivery(delivery_tag, "reject", exc)

    def _leave_to_redelivery(self, delivery_tag: str, what: str, exc: Exception) -> None:
        logger.warning(
            "could not %s message %s (%s); it returns after the visibility timeout",
            what,
            delivery_tag,
            type(exc).__name__,
        )
        virtual.QoS.ack(self, delivery_tag)  # forget it here; Redis still holds it

    def restore_unacked(self, client: Any = None) -> Any:
        """Hand this consumer's unacknowledged messages back, if Redis can still be reached.

        kombu does this when a channel closes, including after the connection to Redis
        was lost; its attempt then fails on the released connection and takes the
        whole worker down ("Unrecoverable error"). The messages are safe either way:
        they stay in the unacked hash, and any live worker restores them after the
        visibility timeout.
        """
        try:
            return super().restore_unacked(client)
        except _CONNECTION_GONE as exc:
            logger.warning(
                "could not hand back %d unacknowledged message(s) (%s); they return"
                " after the visibility timeout",
                len(self._delivered),
                type(exc).__name__,
            )
            self._delivered.clear()
            return None

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> Any:
        channel = self.channel
        if isinstance(channel, Channel):
            channel.inbox_heartbeat()
            channel.reclaim_dead_inboxes()
        try:
            return super().restore_visible(start=start, num=num, interval=interval)
        except redis.exceptions.OutOfMemoryError:
            # kombu's sweep lock and its restores are plain writes, refused over
            # maxmemory; the messages wait in the unacked hash for a later sweep.
            logger.warning(
                "Redis is over maxmemory: messages of dead consumers are restored once it"
                " is under its limit again"
            )
            return None


class Channel(kombu_redis.Channel):
    QoS = QoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inbox_id = secrets.token_hex(8)
        self._inbox_queue: str | None = None
        self._unprefixed: redis.Redis | None = None
        self._take: Any = None
        self._heartbeat: Any = None
        self._reclaim: Any = None
        self._ack: Any = None
        # Queues consumed without acknowledgements (a control client's replies).
        self._no_ack_queues: set[str] = set()

    def basic_consume(
        self, queue: str, no_ack: bool, callback: Any, consumer_tag: str, **kwargs: Any
    ) -> Any:
        if no_ack:
            self._no_ack_queues.add(queue)
        else:
            self._no_ack_queues.discard(queue)
        return super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

    # Keys are prefixed here, by hand, and written through a client that adds no prefix.
    def _key(self, name: str) -> str:
        return f"{self.global_keyprefix or ''}{name}"

    def _plain_client(self) -> redis.Redis:
        if self._unprefixed is None:  # built once: it is used for every message taken
            self._unprefixed = redis.Redis(connection_pool=self.client.connection_pool)
        return self._unprefixed

    def _inbox_key(self, inbox_id: str, queue: str) -> str:
        return self._key(f"inbox{self.sep}{queue}{self.sep}{inbox_id}")

    def inbox_heartbeat(self) -> None:
        """Tell other consumers this one is alive (called from kombu's periodic sweep)."""
        if self._inbox_queue is None:
            return
        if self._heartbeat is None:
            self._heartbeat = RedisScript(self._plain_client(), _HEARTBEAT_SCRIPT)
        # Silent for a visibility timeout, a consumer counts as dead, like its unacked messages.
        alive_for = max(2, int(self.visibility_timeout))
        self._heartbeat(
            keys=[self._key(f"inbox-alive{self.sep}{self._inbox_id}"), self._key("inboxes")],
            args=[alive_for, f"{self._inbox_queue}{self.sep}{self._inbox_id}"],
        )

    def reclaim_dead_inboxes(self) -> None:
        """Put the messages of consumers whose heartbeat lapsed back on their queues."""
        client = self._plain_client()
        for entry in client.smembers(self._key("inboxes")):
            queue, _, inbox_id = bytes_to_str(entry).rpartition(self.sep)
            if inbox_id == self._inbox_id or client.exists(
                self._key(f"inbox-alive{self.sep}{inbox_id}")
            ):
                continue
            if self._reclaim is None:
                self._reclaim = RedisScript(client, _RECLAIM_SCRIPT)
            self._reclaim(
                keys=[self._inbox_key(inbox_id, queue), self._key(queue), self._key("inboxes")],
                args=[entry],
            )

    def _brpop_start(self, timeout: float | None = None) -> None:
        # Several queues need BRPOP's many keys: keep kombu's way there. (Jobs are
        # published without priority, so only the queue's base list is ever filled.)
        if len(self.active_queues) != 1:
            self._inbox_queue = None
            return super()._brpop_start(timeout)  # type: ignore[no-any-return]
        queues = self._queue_cycle.consume(1)
        if not queues:
            return None
        queue = queues[0]
        if self._inbox_queue != queue:
            self._inbox_queue = queue
            self.inbox_heartbeat()
        if timeout is None:
            timeout = self.brpop_timeout
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]
        self.client.connection.send_command(
            "BLMOVE",
            self._key(queue),
            self._inbox_key(self._inbox_id, queue),
            "RIGHT",
            "LEFT",
            timeout or 0,
        )
        return None

    def _brpop_read(self, **options: Any) -> Any:
        queue = self._inbox_queue
        if queue is None:
            return super()._brpop_read(**options)
        try:
            try:
                item = self.client.parse_response(self.client.connection, "BLMOVE", **options)
                handed = 1
            except redis.exceptions.OutOfMemoryError:
                # Over maxmemory Redis refuses BLMOVE, but runs the take script: take
                # from the queue directly (nothing to wait on), and look again soon.
                item, handed = b"", 0
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if item is None:
                raise Empty()
            taken = self._take_recorded(queue, handed)
            if not taken:
                if not handed:
                    sleep(OUT_OF_MEMORY_POLL_SECONDS)
                raise Empty()
            self._queue_cycle.rotate(queue)
            for raw in taken:
                self._deliver_taken(raw, queue)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def remove_unacked(self, tags: list[str], unacked_key: str, index_key: str) -> None:
        """Acknowledge ``tags``: their unacked records go, in one atomic step (allowed
        while Redis is over maxmemory; kombu's MULTI transaction is not)."""
        if self._ack is None:
            self._ack = RedisScript(self._plain_client(), _ACK_SCRIPT)
        self._ack(keys=[self._key(unacked_key), self._key(index_key)], args=tags)

    def _size(self, queue: str) -> int:
        # kombu asks in a MULTI transaction, which Redis refuses whole while over
        # maxmemory (a worker could then not even start); these are reads.
        pipe = self._plain_client().pipeline(transaction=False)
        for pri in self.priority_steps:
            pipe.llen(self._key(self._q_for_pri(queue, pri)))
        return sum(size for size in pipe.execute() if isinstance(size, int))

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        try:
            super()._queue_bind(exchange, routing_key, pattern, queue)
        except redis.exceptions.OutOfMemoryError:
            # A binding routes messages published through an exchange; jobs are pushed
            # onto their queue directly, and consumed without it.
            logger.warning(
                "Redis is over maxmemory: the binding of queue %s is not recorded", queue
            )

    def _take_recorded(self, queue: str, handed: int = 1) -> list[bytes]:
        """This consumer's inbox and more of ``queue``, recorded as unacknowledged;
        ``handed`` messages are in the inbox already (BLMOVE's)."""
        if self._take is None:
            self._take = RedisScript(self._plain_client(), _TAKE_SCRIPT)
        qos = self.qos
        room = qos.can_consume_max_estimate()
        more = TAKE_AT_MOST if room is None else max(0, min(TAKE_AT_MOST, room - handed))
        budget = BYTES_IN_HAND - (qos.bytes_in_hand() if isinstance(qos, QoS) else 0)
        keys = [
            self._key(queue),
            self._inbox_key(self._inbox_id, queue),
            self._key(self.unacked_key),
            self._key(self.unacked_index_key),
        ]
        record = "0" if queue in self._no_ack_queues else "1"
        taken: list[bytes] = self._take(keys=keys, args=[time(), more, max(0, budget), record])
        return taken

    def _deliver_taken(self, raw: bytes, queue: str) -> None:
        try:
            try:  # the envelope: headers, properties and the body as a string
                payload = orjson.loads(raw)
            except orjson.JSONDecodeError:
                payload = loads(bytes_to_str(raw))
            tag = payload["properties"]["delivery_tag"]
        except (ValueError, TypeError, KeyError):
            # Its bytes could be anyone's data: only its size goes to the log.
            logger.error(
                "dropping a message on %s that is not a task message (%d bytes)", queue, len(raw)
            )
            return
        qos = self.qos
        if isinstance(qos, QoS) and queue not in self._no_ack_queues:
            qos.recorded.add(tag)
            qos.measured(tag, len(raw))
        self.connection._deliver(payload, queue)


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(Channel):
    """The channel above, its connections to the master that Sentinel names.

    kombu's own Sentinel transport reads the sentinels from a ``sentinel://`` URL; this
    one takes them, with the master's name, from the ``sentinels`` and ``master_name``
    transport options (celeryconfig.py fills them in from REDIS_SENTINELS and
    REDIS_SENTINEL_MASTER; ``sentinel_auth`` from REDIS_SENTINEL_USERNAME and
    REDIS_SENTINEL_PASSWORD), so the broker URL keeps its credentials and database.
    """

    from_transport_options = (  # type: ignore[assignment]
        *Channel.from_transport_options, "sentinels", "master_name", "sentinel_auth",
    )  # fmt: skip
    connection_class = SentinelManagedConnection  # type: ignore[assignment]
    connection_class_ssl = SentinelManagedSSLConnection  # type: ignore[assignment]
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name = ""
    sentinel_auth: dict[str, str] = {}  # noqa: RUF012 (kombu sets it per channel)

    def _get_pool(self, asynchronous: bool = False) -> Any:
        # kombu's connection options (its polling connection class included), for the
        # master that Sentinel names.
        params = self._connparams(asynchronous=asynchronous)
        self.keyprefix_fanout = self.keyprefix_fanout.format(db=params["db"])
        return master_pool(
            self.sentinels, self.master_name, params, sentinel_auth=self.sentinel_auth
        )


class SentinelTransport(Transport):
    Channel = SentinelChannel
