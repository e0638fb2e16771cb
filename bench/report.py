"""What a run writes: every figure as JSON (``latest.json``) and the table the README
shows (``latest.md``), one row per figure: what, the service's, its baseline in the
same run, the target."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

Row = tuple[str, str, str, str]


def ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else 0.0


def write(results: dict[str, Any], rows: list[Row], out: Path) -> None:
    """Write ``latest.json`` and ``latest.md`` into ``out``, and print the table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        f"Measured {results['date']} on {results['machine']} ({results['mode']} run).",
        "",
        "| figure | service | baseline in the same run | target |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
    ]
    (out / "latest.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def rss_rows(results: dict[str, Any]) -> list[Row]:
    rss = results["rss_mib"]
    return [
        (
            "peak RSS per process",
            f"gateway {rss.get('gateway', 0)} MiB, worker {rss.get('worker', 0)} MiB",
            "",
            "≤ 100 / ≤ 200 MB",
        )
    ]
