"""Completion callbacks, their Redis side: queued when a job is final, taken by senders.

A job admitted for a key or webhook endpoint with a callback URL carries, in its
record, who is called back (the key's or endpoint's id) and the receiver's origin.
When its final row has committed, the same step that drops the record (``forget.lua``)
queues the callback in its receiver's lane: a sorted set per origin of job ids by due
time, with a lanes set saying which lanes are due. Senders take callbacks lane by lane,
at most a few per receiver at once, so a slow or dead receiver holds back only its own
lane, and lease each one taken: a sender that dies leaves it due again when the lease
runs out (a receiver may then get a callback twice; ``webhook-id``, the job id, tells).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import redis


@dataclass(frozen=True, slots=True)
class CallbackRoute:
    """Where a job's outcome goes: ``owner`` (a key or endpoint id) has the URL and the
    secret; ``lane`` is the URL's origin, the receiver its callbacks queue for."""

    owner: str
    lane: str


@dataclass(frozen=True, slots=True)
class TakenCallback:
    """A callback a sender took (leased), to deliver and then settle."""

    job_id: str
    owner: str
    lane: str
    # Attempts that failed so far.
    failures: int
    # Redis's clock, in ms: when the job became final (the first attempt's due time).
    first_ms: int
    # Redis's clock, in ms, when it was taken.
    taken_ms: int


def _script(name: str) -> str:
    return (Path(__file__).parent / f"{name}.lua").read_text()


class CallbackQueue:
    """The lanes of due callbacks: take, then settle (done, or retry later)."""

    def __init__(self, client: redis.Redis, *, key_prefix: str) -> None:
        self._prefix = key_prefix
        self._claim = client.register_script(_script("claim_callbacks"))
        self._settle = client.register_script(_script("settle_callback"))
        self._redis = client

    @property
    def lanes_key(self) -> str:
        return f"{self._prefix}callbacks:lanes"

    def lane_key(self, lane: str) -> str:
        return f"{self._prefix}callbacks:lane:{lane}"

    def record_key(self, job_id: str) -> str:
        return f"{self._prefix}callback:{job_id}"

    def take(
        self, *, most: int, per_lane: int, in_flight: Mapping[str, int], lease_ms: int
    ) -> list[TakenCallback]:
        """Up to ``most`` due callbacks, at most ``per_lane`` less ``in_flight`` per lane."""
        busy = [item for lane, n in in_flight.items() if n for item in (lane, n)]
        reply = self._claim(
            keys=[self.lanes_key], args=[self._prefix, lease_ms, most, per_lane, *busy]
        )
        now, items = int(reply[0]), [v.decode() for v in reply[1:]]
        return [
            TakenCallback(
                job_id=items[i],
                owner=items[i + 1],
                lane=items[i + 2],
                failures=int(items[i + 3]),
                first_ms=int(items[i + 4]),
                taken_ms=now,
            )
            for i in range(0, len(items), 5)
        ]

    def done(self, taken: TakenCallback) -> None:
        """Delivered, or abandoned: forget the callback."""
        self._settle_one(taken, -1)

    def retry(self, taken: TakenCallback, delay_ms: int) -> None:
        """Failed: due again in ``delay_ms``, one more failure counted."""
        self._settle_one(taken, max(0, delay_ms))

    def waiting(self) -> int:
        """Callbacks queued in every lane (due or not)."""
        raw: list[bytes] = self._redis.zrange(self.lanes_key, 0, -1)  # type: ignore[assignment]
        lanes = [lane.decode() for lane in raw]
        pipe = self._redis.pipeline(transaction=False)
        for lane in lanes:
            pipe.zcard(self.lane_key(lane))
        return sum(int(n) for n in pipe.execute())

    def _settle_one(self, taken: TakenCallback, delay_ms: int) -> None:
        self._settle(
            keys=[self.lanes_key, self.lane_key(taken.lane), self.record_key(taken.job_id)],
            args=[taken.job_id, taken.lane, delay_ms],
        )
