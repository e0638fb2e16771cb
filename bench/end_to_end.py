"""End to end: wrk offering a steady rate to the gateway while a worker drains, then
the time from acceptance to final status of every accepted job (status rows)."""

from __future__ import annotations

import time
from typing import Any

from bench.load import wrk
from bench.report import Row
from bench.stack import Profile, RssSampler, Stack, gateway


def measure(stack: Stack, profile: Profile, sampler: RssSampler) -> dict[str, Any]:
    user = f"bench-e2e-{stack.run}"
    key = stack.key(user)
    worker = stack.worker(sampler)
    with gateway(stack, sampler) as served:
        load = wrk(served.url, key, profile.e2e_seconds, 32, profile.e2e_rate, run="e2e")
    accepted = load["requests"] - load["non_2xx"]
    deadline = time.monotonic() + profile.drain_timeout
    while True:
        finished = stack.scalar("SELECT count(*) FROM contact_jobs WHERE user_id = %s", user)
        if finished >= accepted or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    p50, p99 = stack.pg.execute(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d), percentile_cont(0.99)"
        " WITHIN GROUP (ORDER BY d) FROM (SELECT extract(epoch FROM finished_at - accepted_at)"
        " * 1000 AS d FROM contact_jobs WHERE user_id = %s) t",
        (user,),
    ).fetchone()  # type: ignore[misc]
    stack.stop(worker)
    return {
        "offered_per_s": profile.e2e_rate,
        "seconds": profile.e2e_seconds,
        "accepted_per_s": round(load["rps"], 1),
        "accepted": accepted,
        "finished": int(finished),
        "all_finished": finished >= accepted,
        "p50_ms": round(float(p50 or 0), 1),
        "p99_ms": round(float(p99 or 0), 1),
    }


def rows(results: dict[str, Any]) -> list[Row]:
    e = results["end_to_end"]
    return [
        (
            f"end to end at {e['offered_per_s']:,}/s offered for {e['seconds']} s",
            f"p50 {e['p50_ms']:,} ms, p99 {e['p99_ms']:,} ms",
            f"accepted {e['accepted']:,} ({e['accepted_per_s']:,.0f}/s),"
            f" finished {e['finished']:,}",
            "p50 ≤ 25 ms, p99 ≤ 150 ms, all finished",
        )
    ]
