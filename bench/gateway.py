"""The gateway against its floor: the same wrk load on ``serve`` and on an app that
only LPUSHes the body (``floor_app.py``, same server), at saturation and at each
offered rate of the profile."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.load import wrk
from bench.report import ratio
from bench.stack import GRANIAN, Profile, RssSampler, Served, Stack, gateway
from contacts_ingest.infrastructure.local_servers import free_port
from contacts_ingest.infrastructure.scratch import wait_ready


@contextmanager
def floor(stack: Stack) -> Iterator[Served]:
    port = free_port()
    process = stack.start([
        GRANIAN, "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "2", "--log-level", "warning", "bench.floor_app:app",
    ])  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, process, ok_only=False)
    try:
        yield Served(url, process.pid)
    finally:
        stack.stop(process)


def measure(stack: Stack, profile: Profile, sampler: RssSampler) -> dict[str, Any]:
    """``{"service": ..., "floor": ...}``, each by load: ``saturation`` and each rate."""
    key = stack.key("bench-gateway")
    result: dict[str, Any] = {"service": {}, "floor": {}}
    for name, serving in (("service", gateway(stack, sampler)), ("floor", floor(stack))):
        with serving as served:
            wrk(served.url, key, 2, 16)  # warm-up
            result[name]["saturation"] = wrk(
                served.url, key, profile.load_seconds, 32, cpu_of=served.pid
            )
            for rate in profile.rates:
                result[name][str(rate)] = wrk(served.url, key, profile.load_seconds, 32, rate)
    stack.redis.delete(f"{stack.prefix}floor", f"{stack.prefix}{stack.queue}")
    return result


def top_rate(results: dict[str, Any]) -> int:
    """2,000/s is the target's load; a quick run's highest load stands in for it."""
    service = results["gateway"]["service"]
    return 2000 if "2000" in service else max(int(r) for r in service if r.isdigit())


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    g = results["gateway"]
    sat, fsat = g["service"]["saturation"], g["floor"]["saturation"]
    top = top_rate(results)
    at_top = g["service"][str(top)]
    return [
        (
            "gateway: accepted writes/s at saturation (32 connections)",
            f"{sat['rps']:,.0f}",
            f"floor (LPUSH-only app, same server): {fsat['rps']:,.0f};"
            f" ratio {ratio(sat['rps'], fsat['rps'])}",
            "≥ 5,000; ≥ 0.6 of floor",
        ),
        (
            "gateway: CPU per request at saturation (its processes, user and system)",
            f"{sat.get('cpu_us_per_request', 0):,} µs",
            f"floor: {fsat.get('cpu_us_per_request', 0):,} µs",
            "",
        ),
        (
            "gateway: p50 / p99 at saturation",
            f"{sat['p50_ms']} / {sat['p99_ms']} ms",
            f"floor: {fsat['p50_ms']} / {fsat['p99_ms']} ms",
            "",
        ),
        (
            f"gateway: p99 at {top:,}/s offered",
            f"{at_top['p99_ms']} ms (served {at_top['rps']:,.0f}/s)",
            f"floor: {g['floor'][str(top)]['p99_ms']} ms",
            "≤ 25 ms at 2,000/s",
        ),
    ]


def plot(results: dict[str, Any], path: Path) -> None:
    """Latency against offered load, service and floor (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install 'contacts-ingest[bench]')")
        return
    g = results["gateway"]
    figure, axis = plt.subplots(figsize=(7, 4))
    for name, label in (("service", "gateway"), ("floor", "floor (LPUSH only)")):
        points = sorted((int(k), v) for k, v in g[name].items() if k.isdigit())
        axis.plot(
            [p[0] for p in points],
            [p[1]["p99_ms"] for p in points],
            marker="o",
            label=f"{label} p99",
        )
        axis.plot(
            [p[0] for p in points],
            [p[1]["p50_ms"] for p in points],
            marker=".",
            linestyle="--",
            label=f"{label} p50",
        )
    axis.set_xlabel("offered load (POST/s)")
    axis.set_ylabel("latency (ms)")
    axis.set_yscale("log")
    axis.set_title(f"POST /io/contacts/contacts, {results['date']}")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
