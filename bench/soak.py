"""Soak: a steady load through the real gateway and worker, then an audit.

    python bench/soak.py --seconds 600 --rate 100      (make soak; SOAK_SECONDS=60 for short)

Runs on the PostgreSQL and Redis named by DATABASE_URL / REDIS_URL (defaults: the
local ones), in a database, key prefix and queue of its own that it removes at the
end. Reports accepted, final, lost and duplicated jobs and the RSS of the gateway
and worker process trees over time; exits 1 if anything was lost or duplicated.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import requests
from sqlalchemy import create_engine, text

from contacts_ingest.infrastructure.scratch import (
    CLI,
    NotReady,
    Process,
    run_id,
    scratch_database,
    scratch_prefix,
    start_gateway,
    start_worker,
)
from contacts_ingest.infrastructure.settings import Settings, sqlalchemy_url


@dataclass
class Report:
    seconds: float
    offered_per_second: float
    accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    final: int = 0
    lost: int = 0
    duplicated: int = 0
    # Final, but not the 201 every job here should get.
    failed: int = 0
    drain_seconds: float = 0.0
    # (seconds since start, gateway MiB, worker MiB)
    rss: list[tuple[float, float, float]] = field(default_factory=list)


def tree_rss_mib(pid: int) -> float:
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--rate", type=float, default=100, help="requests per second offered")
    parser.add_argument("--out", type=Path, default=Path("bench/results/soak.json"))
    parser.add_argument("--quiet", action="store_true", help="hide the service's own output")
    args = parser.parse_args()

    base = Settings()
    run = run_id()
    report = Report(seconds=args.seconds, offered_per_second=args.rate)
    with (
        scratch_database(
            base.database_url, f"contacts_soak_{run}", admin_database="postgres"
        ) as database_url,
        scratch_prefix(base.redis_url, f"contacts-soak-{run}:") as prefix,
    ):
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_KEY_PREFIX": prefix,
            "CELERY_QUEUE": f"soak-{run}",
            "RATE_LIMIT_WRITES": "1000000000",
            "LOG_LEVEL": "WARNING",
        }
        worker = start_worker(env, quiet=args.quiet)
        try:
            gateway, url = start_gateway(env, quiet=args.quiet)
        except NotReady:
            worker.stop(timeout=60)
            raise SystemExit("the gateway did not start") from None
        try:
            soak(args, env, url, gateway, worker, report)
        finally:
            gateway.stop(timeout=60)
            worker.stop(timeout=60)

    print_report(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(asdict(report), indent=2) + "\n")
    healthy = report.accepted > 0 and report.lost == report.duplicated == report.failed == 0
    return 0 if healthy else 1


def soak(
    args: argparse.Namespace,
    env: dict[str, str],
    url: str,
    gateway: Process,
    worker: Process,
    report: Report,
) -> None:
    """Offer the load, then wait for the drain and audit the database into ``report``."""
    key = subprocess.run(
        [CLI, "keys", "create", "--user", "soak"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    database_url = env["DATABASE_URL"]
    accepted: list[str] = []
    lock = threading.Lock()
    started = time.monotonic()
    stop_at = started + args.seconds

    def client(index: int, clients: int) -> None:
        session = requests.Session()
        headers = {"Authorization": f"Bearer {key}"}
        interval = clients / args.rate
        n = 0
        next_at = started + index * interval / clients
        while next_at < stop_at:
            time.sleep(max(0.0, next_at - time.monotonic()))
            n += 1
            body = {"email": f"soak-{index}-{n}@example.com", "firstName": "Soak"}
            try:
                answer = session.post(
                    f"{url}/io/contacts/contacts", json=body, headers=headers, timeout=10
                )
                outcome = str(answer.status_code)
            except requests.RequestException as exc:
                outcome = type(exc).__name__
            with lock:
                if outcome == "202":
                    accepted.append(answer.json()["data"]["job_id"])
                else:
                    report.refused[outcome] = report.refused.get(outcome, 0) + 1
            next_at += interval

    clients = 8
    threads = [
        threading.Thread(target=client, args=(i, clients), daemon=True) for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        report.rss.append(
            (
                round(time.monotonic() - started, 1),
                round(tree_rss_mib(gateway.pid), 1),
                round(tree_rss_mib(worker.pid), 1),
            )
        )
        time.sleep(min(10.0, max(1.0, args.seconds / 20)))
    report.rss.append(
        (
            round(time.monotonic() - started, 1),
            round(tree_rss_mib(gateway.pid), 1),
            round(tree_rss_mib(worker.pid), 1),
        )
    )
    report.accepted = len(accepted)

    engine = create_engine(sqlalchemy_url(database_url))
    drain_started = time.monotonic()
    with engine.connect() as conn:
        while True:
            final = conn.execute(
                text("SELECT count(*) FROM contact_jobs WHERE job_id = ANY(:ids)"),
                {"ids": accepted},
            ).scalar_one()
            conn.commit()
            if final == len(accepted) or time.monotonic() - drain_started > 180:
                break
            time.sleep(0.5)
        report.final = int(final)
        report.drain_seconds = round(time.monotonic() - drain_started, 1)
        report.lost = report.accepted - report.final
        # Every job created a distinct contact once: any other write is a duplicate.
        report.duplicated = int(
            conn.execute(text("SELECT coalesce(sum(version - 1), 0) FROM contacts")).scalar_one()
        )
        report.failed = int(
            conn.execute(text("SELECT count(*) FROM contact_jobs WHERE code <> 201")).scalar_one()
        )
    engine.dispose()


def print_report(report: Report) -> None:
    first, middle, last = report.rss[0], report.rss[len(report.rss) // 2], report.rss[-1]
    rows = [
        ("duration", f"{report.seconds:.0f} s at {report.offered_per_second:.0f} req/s offered"),
        ("accepted (202)", str(report.accepted)),
        ("refused", ", ".join(f"{k}: {v}" for k, v in report.refused.items()) or "0"),
        ("final", f"{report.final} (drained {report.drain_seconds} s after the load)"),
        ("lost", str(report.lost)),
        ("duplicated", str(report.duplicated)),
        ("failed", str(report.failed)),
        ("gateway RSS", f"{first[1]} -> {middle[1]} -> {last[1]} MiB (start, middle, end)"),
        ("worker RSS", f"{first[2]} -> {middle[2]} -> {last[2]} MiB (start, middle, end)"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    sys.exit(main())
