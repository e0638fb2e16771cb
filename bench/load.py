"""Offered load: ``wrk`` posting contacts (``wrk_post_contacts.lua``), at saturation or
at a fixed rate, and what it saw."""

from __future__ import annotations

import os
import re
import subprocess

import psutil

from bench.stack import ROOT

WRK_SCRIPT = str(ROOT / "bench" / "wrk_post_contacts.lua")
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) used so far by the process ``pid`` and its children."""
    root = psutil.Process(pid)
    total = 0.0
    for process in (root, *root.children(recursive=True)):
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def wrk(
    url: str,
    key: str,
    seconds: int,
    connections: int,
    rate: int = 0,
    run: str = "",
    cpu_of: int | None = None,
) -> dict[str, float]:
    """Run wrk; return requests/s, p50 and p99 in ms, and non-2xx answers; with
    ``cpu_of`` (the server's pid), also the server's CPU time per answered request."""
    cpu_before = cpu_seconds(cpu_of) if cpu_of is not None else 0.0
    done = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", WRK_SCRIPT, url],
        env={**os.environ, "KEY": key, "RATE": str(rate), "CONNECTIONS": str(connections),
             "RUN": run},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    out = done.stdout
    cpu = cpu_seconds(cpu_of) - cpu_before if cpu_of is not None else 0.0

    def latency(percent: str) -> float:
        match = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", out, flags=re.M)
        return round(float(match.group(1)) * _UNITS[match.group(2)], 2) if match else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    requests = int(total.group(1)) if total else 0
    figures = {
        "rps": round(float(rps.group(1)) if rps else 0.0, 1),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "requests": requests,
    }
    if cpu_of is not None and requests:
        figures["cpu_us_per_request"] = round(cpu * 1e6 / requests)
    return figures
