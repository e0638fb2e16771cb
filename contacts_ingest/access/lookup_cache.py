"""Answers of the gateway's PostgreSQL lookups (API keys, webhook endpoints), remembered.

An answer is fresh for ``ttl`` seconds. While PostgreSQL is unreachable the last
answer is served whatever its age: nobody can revoke a key or an endpoint then, so it
is still the newest one. What was found and what was not are remembered apart, each
in a bounded cache of its own, so a flood of made-up keys pushes out only other
made-up keys, never one that exists.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from cachetools import LRUCache
from sqlalchemy.exc import OperationalError

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LookupCache(Generic[K, V]):
    """Wraps ``lookup`` (a value, or None when nothing matches) with remembered answers."""

    def __init__(
        self,
        lookup: Callable[[K], V | None],
        *,
        ttl: float,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._ttl = ttl
        self._clock = clock
        # key -> (answer, when PostgreSQL gave it)
        self._found: LRUCache[K, tuple[V, float]] = LRUCache(maxsize=max_entries)
        self._missing: LRUCache[K, float] = LRUCache(maxsize=max_entries)
        self._lock = threading.Lock()

    def get(self, key: K, *, max_age: float | None = None) -> V | None:
        """The answer for ``key``: from the cache if younger than the ttl (and than
        ``max_age``, if given), else looked up.

        Raises OperationalError only when PostgreSQL is unreachable and this process
        has no answer for ``key`` at all.
        """
        now = self._clock()
        fresh_for = self._ttl if max_age is None else min(self._ttl, max_age)
        with self._lock:
            if (found := self._found.get(key)) is not None and now - found[1] < fresh_for:
                return found[0]
            if (missing := self._missing.get(key)) is not None and now - missing < fresh_for:
                return None
        try:
            answer = self._lookup(key)
        except OperationalError:
            with self._lock:
                if (found := self._found.get(key)) is not None:
                    return found[0]
                if key in self._missing:
                    return None
            raise
        with self._lock:
            if answer is None:
                self._found.pop(key, None)
                self._missing[key] = now
            else:
                self._missing.pop(key, None)
                self._found[key] = (answer, now)
        return answer

    def found_before(self, key: K) -> bool:
        """Whether the last answer PostgreSQL gave this process for ``key`` found it."""
        with self._lock:
            return key in self._found
