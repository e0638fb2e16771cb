"""The callback sender: takes due callbacks lane by lane, POSTs them, settles them.

Runs beside each worker (``contacts-ingest worker`` starts it when
``CALLBACK_ALLOWED_HOSTS`` is set) in a process of its own, so callbacks never hold
back ingestion. ``CALLBACK_CONCURRENCY`` threads deliver at once, at most
``CALLBACK_MAX_PER_RECEIVER`` of them to one receiver (origin): a receiver that is
slow or never answers holds back only its own callbacks. A failed attempt (a non-2xx
answer, a timeout, a refused connection) is retried with backoff, the first retry
after 5 seconds, until ``CALLBACK_RETRY_WINDOW_SECONDS`` (a day) after the job became
final; then the callback is abandoned (logged, counted).
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Literal

from standardwebhooks import Webhook

from contacts_ingest.access.callback_targets import CallbackTarget
from contacts_ingest.callbacks.outbound import AddressRefused, post
from contacts_ingest.infrastructure.metrics import CALLBACKS
from contacts_ingest.infrastructure.origins import origin_of
from contacts_ingest.infrastructure.settings import Settings
from contacts_ingest.jobs.callbacks import CallbackQueue, TakenCallback
from contacts_ingest.jobs.messages import json_bytes

log = logging.getLogger(__name__)

# Seconds before the next attempt, by failures so far; the last one repeats.
RETRY_DELAYS = (5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800)
# How often an idle sender looks for due callbacks.
POLL_SECONDS = 0.25

Outcome = Literal["delivered", "retried", "abandoned"]
Poster = Callable[..., int]


def retry_delay_ms(failures: int, elapsed_ms: int, window_ms: int) -> int | None:
    """Milliseconds until the next attempt after ``failures`` failed ones (this one
    included), ``elapsed_ms`` after the first; None once the retry window is over. The
    last attempt falls at the window's end."""
    if elapsed_ms >= window_ms:
        return None
    delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS)) - 1] * 1000
    return min(delay, window_ms - elapsed_ms)


class CallbackSender:
    """Delivers the callbacks of ``queue``; ``targets`` and ``documents`` look up an
    owner's URL and secret and a final job's document (None when there is none)."""

    def __init__(
        self,
        queue: CallbackQueue,
        targets: Callable[[str], CallbackTarget | None],
        documents: Callable[[str], Mapping[str, object] | None],
        settings: Settings,
        poster: Poster = post,
    ) -> None:
        self._queue = queue
        self._targets = targets
        self._documents = documents
        self._allowed = settings.callback_origins
        self._concurrency = settings.callback_concurrency
        self._per_receiver = settings.callback_max_per_receiver
        self._timeout = settings.callback_timeout_seconds
        self._window_ms = settings.callback_retry_window_seconds * 1000
        # Longer than an attempt can take (connect, send, read), so no other sender
        # takes a callback while its attempt is still going.
        self._lease_ms = int((3 * self._timeout + 30) * 1000)
        self._poster = poster
        self._in_flight: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._freed = threading.Event()

    def run(self, stop: threading.Event) -> None:
        """Deliver until ``stop`` is set; attempts in progress then finish."""
        with ThreadPoolExecutor(self._concurrency, thread_name_prefix="callback") as pool:
            while not stop.is_set():
                taken = self._take()
                for callback in taken:
                    pool.submit(self._attempt, callback)
                if not taken:
                    self._freed.wait(POLL_SECONDS)
                    self._freed.clear()

    def deliver(self, taken: TakenCallback) -> Outcome:
        """One attempt at ``taken``, settled in the queue; what became of it."""
        started = time.monotonic()
        target = self._targets(taken.owner)
        if target is None:
            return self._abandon(taken, "its key or endpoint has no callback")
        try:
            origin = origin_of(target.url)
        except ValueError:
            origin = ""
        if origin not in self._allowed:
            return self._abandon(taken, "its origin is not in CALLBACK_ALLOWED_HOSTS")
        document = self._documents(taken.job_id)
        if document is None:
            return self._abandon(taken, "the job has no final status")
        body = json_bytes({"data": document})
        sent_at = datetime.now(UTC)
        headers = {
            "webhook-id": taken.job_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": Webhook(target.secret).sign(taken.job_id, sent_at, body.decode()),
        }
        try:
            status = self._poster(target.url, body, headers, timeout=self._timeout)
        except AddressRefused:
            return self._abandon(taken, "its host resolves to an address that is not public")
        except (OSError, http.client.HTTPException) as exc:
            return self._failed(taken, type(exc).__name__, started)
        if 200 <= status < 300:
            self._queue.done(taken)
            CALLBACKS.labels("delivered").inc()
            log.info(
                "callback delivered",
                extra={"job_id": taken.job_id, "receiver": taken.lane, "code": status},
            )
            return "delivered"
        return self._failed(taken, f"answered {status}", started)

    def _take(self) -> list[TakenCallback]:
        with self._lock:
            room = self._concurrency - sum(self._in_flight.values())
            busy = dict(self._in_flight)
        if room <= 0:
            return []
        try:
            taken = self._queue.take(
                most=room, per_lane=self._per_receiver, in_flight=busy, lease_ms=self._lease_ms
            )
        except Exception as exc:  # Redis unreachable: try again shortly
            log.warning("cannot take callbacks: %s", type(exc).__name__)
            time.sleep(1)
            return []
        with self._lock:
            for callback in taken:
                self._in_flight[callback.lane] += 1
        return taken

    def _attempt(self, taken: TakenCallback) -> None:
        try:
            self.deliver(taken)
        except Exception:
            # PostgreSQL or Redis failing: the lease runs out and the callback is taken again.
            log.exception("callback attempt failed", extra={"job_id": taken.job_id})
        finally:
            with self._lock:
                self._in_flight[taken.lane] -= 1
                if not self._in_flight[taken.lane]:
                    del self._in_flight[taken.lane]
            self._freed.set()

    def _failed(self, taken: TakenCallback, reason: str, started: float) -> Outcome:
        elapsed_ms = taken.taken_ms - taken.first_ms + int((time.monotonic() - started) * 1000)
        delay = retry_delay_ms(taken.failures + 1, elapsed_ms, self._window_ms)
        if delay is None:
            return self._abandon(taken, f"still failing after the retry window ({reason})")
        self._queue.retry(taken, delay)
        CALLBACKS.labels("retried").inc()
        log.warning(
            "callback attempt failed; retrying",
            extra={
                "job_id": taken.job_id,
                "receiver": taken.lane,
                "reason": reason,
                "attempts": taken.failures + 1,
                "retry_in_seconds": delay / 1000,
            },
        )
        return "retried"

    def _abandon(self, taken: TakenCallback, reason: str) -> Outcome:
        self._queue.done(taken)
        CALLBACKS.labels("abandoned").inc()
        log.error(
            "callback abandoned",
            extra={
                "job_id": taken.job_id,
                "receiver": taken.lane,
                "reason": reason,
                "attempts": taken.failures + 1,
            },
        )
        return "abandoned"
