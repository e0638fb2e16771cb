"""Failed authentications, counted per client address.

Every failed authentication (a missing, unknown or revoked key; an unknown endpoint or
a bad signature) takes a token from its address's bucket, which refills at ``limit``
per ``window`` seconds. An address with no token left is refused (429) before its key
is looked up, unless the key is one this process has seen live, so guessing keys
costs PostgreSQL at most ``limit`` lookups per window per address and gateway
process, and never locks out a client whose key works.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import falcon
from cachetools import LRUCache

TOO_MANY_FAILURES = "Too many failed authentications from this address; retry later"


class TooManyFailures(falcon.HTTPTooManyRequests):
    def __init__(self, retry_after: int) -> None:
        super().__init__(description=TOO_MANY_FAILURES, retry_after=retry_after)


class FailureThrottle:
    """A token bucket per client address (the ``max_addresses`` most recent ones)."""

    def __init__(
        self,
        limit: int,
        window: float,
        *,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._capacity = float(limit)
        self._per_second = limit / window
        self._clock = clock
        # address -> (tokens left, when they were counted)
        self._buckets: LRUCache[str, tuple[float, float]] = LRUCache(maxsize=max_addresses)
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may fail again, or None if it may now."""
        with self._lock:
            tokens = self._tokens(address, self._clock())
        return None if tokens >= 1 else math.ceil((1 - tokens) / self._per_second)

    def failed(self, address: str) -> None:
        """Count one failed authentication from ``address``."""
        now = self._clock()
        with self._lock:
            self._buckets[address] = (max(self._tokens(address, now) - 1, 0.0), now)

    def _tokens(self, address: str, now: float) -> float:
        tokens, counted = self._buckets.get(address, (self._capacity, now))
        return min(self._capacity, tokens + (now - counted) * self._per_second)
