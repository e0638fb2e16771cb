"""``Prefer: wait=N``: hold a request until its job is final, without polling.

One Redis subscription per gateway process (a pattern over the completion channels)
feeds every waiting request: a worker publishes on a job's channel right after the
job's final row committed, and only when someone asked to wait for it. A waiting
request holds a server thread, so ``WaitSlots`` bounds how many wait at once, per
user and per process: past either bound, the request is answered at once. Writes (a
202) and job reads (the job as it stands) wait alike, in the same slots.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import falcon
import redis
from sqlalchemy import RowMapping

from api_gateway.gate import STEP_OUT
from contacts_ingest.infrastructure.metrics import WAITS_DECLINED
from contacts_ingest.infrastructure.settings import MAX_WAIT_SECONDS
from contacts_ingest.jobs.board import JobBoard
from contacts_ingest.jobs.status import FinalJobReader

log = logging.getLogger(__name__)

_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?(\d{1,6})\"?(?=$|[,;\s])", re.IGNORECASE)
_PREFER_ASYNC = re.compile(r"(?:^|,)\s*respond-async\s*(?=$|[,;])", re.IGNORECASE)


def preferred_wait(prefer: str | None) -> int | None:
    """The ``wait`` preference of a Prefer header (RFC 7240), capped at 10 s; None if absent."""
    if not prefer:
        return None
    match = _PREFER_WAIT.search(prefer)
    if match is None:
        return None
    return min(int(match.group(1)), MAX_WAIT_SECONDS)


def prefers_async(prefer: str | None) -> bool:
    """Whether a Prefer header (RFC 7240) has the ``respond-async`` preference."""
    return bool(prefer and _PREFER_ASYNC.search(prefer))


class WaitSlots:
    """At most ``per_user`` requests of one user, and ``per_process`` in all, wait at once."""

    def __init__(self, *, per_user: int, per_process: int) -> None:
        self._per_user = per_user
        self._per_process = per_process
        self._waiting: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def slot(self, user_id: str) -> Iterator[bool]:
        """Yields whether ``user_id`` may wait now; the slot is given back on exit."""
        with self._lock:
            taken = (
                self._waiting.total() < self._per_process
                and self._waiting[user_id] < self._per_user
            )
            if taken:
                self._waiting[user_id] += 1
        try:
            yield taken
        finally:
            if taken:
                with self._lock:
                    self._waiting[user_id] -= 1
                    if not self._waiting[user_id]:
                        del self._waiting[user_id]


class CompletionListener:
    """Wakes the threads waiting for particular jobs when their completion arrives."""

    def __init__(self, client: redis.Redis, pattern: str) -> None:
        self._client = client
        self._pattern = pattern
        self._prefix = pattern.rstrip("*")
        self._waiters: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    def register(self, job_id: str) -> threading.Event:
        """Start listening for ``job_id``; call before asking for its completion message."""
        self._ensure_running()
        event = threading.Event()
        with self._lock:
            self._waiters[job_id] = event
        return event

    def unregister(self, job_id: str) -> None:
        with self._lock:
            self._waiters.pop(job_id, None)

    def _ensure_running(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._ready.clear()
                self._thread = threading.Thread(
                    target=self._listen, name="completion-listener", daemon=True
                )
                self._thread.start()
        if not self._ready.wait(2):
            raise redis.ConnectionError("cannot subscribe to job completions")

    def _listen(self) -> None:
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=False)  # type: ignore[no-untyped-call]
            try:
                pubsub.psubscribe(self._pattern)
                for message in pubsub.listen():
                    if message["type"] == "psubscribe":
                        self._ready.set()
                    elif message["type"] == "pmessage":
                        self._wake(message["channel"])
            except redis.RedisError as exc:
                # Waiters fall back to their timeout; subscribe again once Redis is back.
                self._ready.clear()
                log.warning("completion subscription lost: %s", type(exc).__name__)
                time.sleep(0.5)
            finally:
                pubsub.close()

    def _wake(self, channel: bytes | str) -> None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        job_id = name[len(self._prefix) :]
        with self._lock:
            event = self._waiters.get(job_id)
        if event is not None:
            event.set()


class JobWaiter:
    """Waits for a job to be final, within the wait slots; PostgreSQL is read at most
    twice per wait (after subscribing, the job may be final already; on the message)."""

    def __init__(
        self,
        board: JobBoard,
        final_job: FinalJobReader,
        completions: CompletionListener | None,
        slots: WaitSlots,
    ) -> None:
        self._board = board
        self._final_job = final_job
        self._completions = completions
        self._slots = slots

    def final_within(
        self, req: falcon.Request, user_id: str, job_id: str, seconds: int
    ) -> tuple[bool, RowMapping | None]:
        """(whether it waited, the job's final row or None) within ``seconds``.

        It does not wait when ``user_id`` or the process already has the most requests
        waiting (counted in ``contacts_gateway_waits_declined_total``), or when the
        completion subscription cannot be had.
        """
        if self._completions is None:
            return False, None
        with self._slots.slot(user_id) as slot:
            if not slot:
                WAITS_DECLINED.inc()
                return False, None
            try:
                done = self._completions.register(job_id)
            except redis.RedisError:
                return False, None  # no subscription: answer as without the preference
            try:
                self._board.watch(job_id)
                final = self._final_job(job_id)
                if final is None:
                    with req.env.get(STEP_OUT, nullcontext)():
                        done.wait(seconds)
                    final = self._final_job(job_id)
                return True, final
            finally:
                self._completions.unregister(job_id)
