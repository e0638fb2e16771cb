"""One box: the gateway and a worker on the same cores, as someone trying the service
on one machine runs it (``serve`` and ``worker`` with their defaults), under wrk at
saturation. Two figures: writes accepted per second, and jobs drained per second from
the first acceptance to the last final status (the service's own timestamps: Redis's
clock at admission, the status rows' finished_at). The baseline is the gateway
floor of the same run, measured without a worker."""

from __future__ import annotations

import time
from typing import Any

from bench.load import wrk
from bench.report import Row, ratio
from bench.stack import Profile, RssSampler, Stack, gateway


def measure(stack: Stack, profile: Profile, sampler: RssSampler) -> dict[str, Any]:
    user = f"bench-one-box-{stack.run}"
    key = stack.key(user)
    worker = stack.worker(sampler)
    try:
        with gateway(stack, sampler) as served:
            load = wrk(served.url, key, profile.load_seconds, 32, run="one-box")
        # wrk counts the answers it read; a few more may have been accepted as it stopped.
        accepted = load["requests"] - load["non_2xx"]
        deadline = time.monotonic() + profile.drain_timeout
        finished = -1
        while True:
            seen = finished
            time.sleep(0.5)
            finished = stack.scalar("SELECT count(*) FROM contact_jobs WHERE user_id = %s", user)
            settled = finished >= accepted and finished == seen
            if settled or time.monotonic() > deadline:
                break
        first, last = stack.pg.execute(
            "SELECT min(accepted_at), max(finished_at) FROM contact_jobs WHERE user_id = %s",
            (user,),
        ).fetchone()  # type: ignore[misc]
    finally:
        stack.stop(worker)
    span = (last - first).total_seconds() if first and last else 0.0
    return {
        "seconds": profile.load_seconds,
        "accepted_per_s": round(accepted / profile.load_seconds, 1),
        "accepted": accepted,
        "finished": int(finished),
        "all_finished": finished >= accepted,
        "drain_seconds": round(span, 2),
        "drained_per_s": round(finished / span, 1) if span else 0.0,
    }


def rows(results: dict[str, Any]) -> list[Row]:
    box = results["one_box"]
    floor = results["gateway"]["floor"]["saturation"]["rps"]
    return [
        (
            "one box: gateway and worker on the same cores, at saturation (32 connections)",
            f"accepted {box['accepted_per_s']:,.0f}/s; drained {box['drained_per_s']:,.0f}"
            f" jobs/s ({box['finished']:,} jobs final for the {box['accepted']:,} 202s wrk read,"
            f" {box['drain_seconds']} s from first acceptance to last final status)",
            f"gateway floor (no worker): {floor:,.0f}/s; drained/floor"
            f" {ratio(box['drained_per_s'], floor)}",
            "≥ 3,000 jobs/s drained",
        )
    ]
