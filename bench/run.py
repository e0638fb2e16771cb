"""The benchmark: the service and its baselines, measured side by side in one run.

    python bench/run.py            (make bench: about 10 minutes)
    python bench/run.py --quick    (make bench-quick: about 2 minutes, smaller and shorter)

Needs wrk (Debian/Ubuntu: apt-get install wrk) and the local PostgreSQL and Redis
(DATABASE_URL's server, REDIS_URL). Works in a database, key prefix and queues of its
own, removed at the end. Writes bench/results/latest.json (every figure),
latest.md (the table the README shows) and latency.png (latency against offered
load, service and floor).

Each measurement is a module of its own, run here in order on one stack
(``stack.py``): ``validation.py``, ``gateway.py`` (against its floor), ``worker.py``
(the drain, the naive baseline and the persistence floor), ``upserts.py``,
``end_to_end.py``, ``one_box.py`` (gateway and worker together). Adding one is a
``Step`` below and its rows in ``ROWS``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import end_to_end, gateway, one_box, report, upserts, validation, worker
from bench.stack import FULL, QUICK, ROOT, Profile, RssSampler, Stack


@dataclass(frozen=True)
class Run:
    """What every measurement is given: the stack, how much and how long, the sampler."""

    stack: Stack
    profile: Profile
    sampler: RssSampler
    quick: bool


@dataclass(frozen=True)
class Step:
    """One measurement: where its figures go in the results, and what it says first."""

    key: str
    label: str | None
    measure: Callable[[Run], dict[str, Any]]


STEPS = (
    Step("validation", "validation", lambda r: validation.measure(r.quick)),
    Step("gateway", "gateway and floor", lambda r: gateway.measure(r.stack, r.profile, r.sampler)),
    Step("worker", "worker drain", lambda r: worker.measure(r.stack, r.profile, r.sampler)),
    Step(
        "upserts",  # says what it measures itself
        None,
        lambda r: upserts.measure(r.stack, r.profile, r.sampler, quick=r.quick),
    ),
    Step("naive", "naive baseline", lambda r: worker.naive_baseline(r.stack, r.profile)),
    Step(
        "persistence_floor",
        "persistence floor",
        lambda r: worker.persistence_floor(r.stack, r.profile),
    ),
    Step("end_to_end", "end to end", lambda r: end_to_end.measure(r.stack, r.profile, r.sampler)),
    Step("one_box", "one box", lambda r: one_box.measure(r.stack, r.profile, r.sampler)),
)

# The table's rows, in its order.
ROWS: tuple[Callable[[dict[str, Any]], list[report.Row]], ...] = (
    gateway.rows,
    worker.rows,
    end_to_end.rows,
    one_box.rows,
    report.rss_rows,
    worker.memory_rows,
    lambda results: validation.rows(results["validation"]),
    upserts.table_rows,
)


def worker_only(profile: Profile) -> int:
    """The worker drain alone, for measuring a change to the worker before and after."""
    stack = Stack()
    sampler = RssSampler()
    try:
        figures = worker.measure(stack, profile, sampler)
        figures["upserts"] = upserts.bench_upsert_drain(stack, profile, sampler)
    finally:
        sampler.close()
        stack.close()
    print(json.dumps({**figures, "worker_rss_mib": sampler.peaks.get("worker")}))
    return 0


def gateway_only(profile: Profile) -> int:
    """The gateway against its floor, and the one box, for measuring a change to the
    gateway before and after: their figures printed, nothing written."""
    stack = Stack()
    sampler = RssSampler()
    try:
        figures = {
            "gateway": gateway.measure(stack, profile, sampler),
            "one_box": one_box.measure(stack, profile, sampler),
        }
    finally:
        sampler.close()
        stack.close()
    saturation = figures["gateway"]
    print(json.dumps({
        "service": saturation["service"]["saturation"],
        "floor": saturation["floor"]["saturation"],
        "one_box": figures["one_box"],
        "gateway_rss_mib": sampler.peaks.get("gateway"),
    }))  # fmt: skip
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="contacts-ingest benchmark")
    parser.add_argument("--quick", action="store_true", help="smaller and shorter (about 2 min)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--worker-only",
        action="store_true",
        help="only the worker drain (single and bulk jobs); print its figures, write nothing",
    )
    parser.add_argument(
        "--gateway-only",
        action="store_true",
        help="only the gateway against its floor, and the one box; print their figures,"
        " write nothing",
    )
    args = parser.parse_args()
    if args.worker_only:
        return worker_only(QUICK if args.quick else FULL)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk (or brew install wrk)")
    if args.gateway_only:
        return gateway_only(QUICK if args.quick else FULL)
    profile = QUICK if args.quick else FULL
    stack = Stack()
    sampler = RssSampler()
    started = time.monotonic()
    try:
        results: dict[str, Any] = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "machine": (
                f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
            ),
            "mode": "quick" if args.quick else "full",
        }
        run = Run(stack, profile, sampler, args.quick)
        for step in STEPS:
            if step.label:
                print(f"{step.label} ...", flush=True)
            results[step.key] = step.measure(run)
        results["rss_mib"] = sampler.peaks
        results["seconds"] = round(time.monotonic() - started)
    finally:
        sampler.close()
        stack.close()
    report.write(results, [row for rows in ROWS for row in rows(results)], args.out)
    gateway.plot(results, args.out / "latency.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
