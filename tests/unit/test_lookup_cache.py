"""Remembered lookup answers: fresh for a while, kept for outages, made-up keys apart."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from contacts_ingest.access.lookup_cache import LookupCache


class Database:
    """A key -> value table that can become unreachable, counting its lookups."""

    def __init__(self, rows: dict[str, str]) -> None:
        self.rows = rows
        self.reachable = True
        self.lookups = 0

    def lookup(self, key: str) -> str | None:
        if not self.reachable:
            raise OperationalError("SELECT", {}, ConnectionRefusedError())
        self.lookups += 1
        return self.rows.get(key)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_answers_are_fresh_for_the_ttl_then_asked_again() -> None:
    database, clock = Database({"k": "alice"}), Clock()
    cache = LookupCache(database.lookup, ttl=10, clock=clock)
    assert [cache.get("k"), cache.get("k"), cache.get("nope"), cache.get("nope")] == [
        "alice", "alice", None, None,
    ]  # fmt: skip
    assert database.lookups == 2
    del database.rows["k"]  # revoked
    clock.now = 10
    assert cache.get("k") is None
    assert not cache.found_before("k")


def test_a_flood_of_unknown_keys_never_pushes_a_known_one_out() -> None:
    database = Database({"real": "alice", "revoked": "bob"})
    cache = LookupCache(database.lookup, ttl=0, max_entries=10)
    assert cache.get("real") == "alice"
    del database.rows["revoked"]
    assert cache.get("revoked") is None
    for guess in range(1000):
        assert cache.get(f"guess-{guess}") is None

    database.reachable = False
    assert cache.get("real") == "alice"  # its last answer, however old
    assert cache.found_before("real")
    with pytest.raises(OperationalError):
        cache.get("revoked")  # pushed out by the guesses: only they compete with it
    with pytest.raises(OperationalError):
        cache.get("never-seen")


def test_while_the_database_is_down_a_recent_refusal_still_stands() -> None:
    database = Database({})
    cache = LookupCache(database.lookup, ttl=0)
    assert cache.get("revoked") is None
    database.reachable = False
    assert cache.get("revoked") is None


def test_a_caller_may_ask_for_an_answer_younger_than_the_ttl() -> None:
    now = [0.0]
    calls: list[str] = []

    def lookup(key: str) -> str:
        calls.append(key)
        return f"answer {len(calls)}"

    cache: LookupCache[str, str] = LookupCache(lookup, ttl=60, clock=lambda: now[0])
    assert cache.get("k") == "answer 1"
    now[0] = 0.5
    assert cache.get("k", max_age=1) == "answer 1"  # young enough: PostgreSQL not asked
    now[0] = 2
    assert cache.get("k") == "answer 1"
    assert cache.get("k", max_age=1) == "answer 2"
    assert calls == ["k", "k"]
