"""The benchmark: the service and its baselines, measured side by side in one run.

    python bench/run.py            (make bench: about 10 minutes)
    python bench/run.py --quick    (make bench-quick: about 2 minutes, smaller and shorter)

Needs wrk (Debian/Ubuntu: apt-get install wrk) and the local PostgreSQL and Redis
(DATABASE_URL's server, REDIS_URL). Works in a database, key prefix and queues of its
own, removed at the end. Writes bench/results/latest.json (every figure),
latest.md (the table the README shows) and latency.png (latency against offered
load, service and floor).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
CELERY = str(Path(sys.executable).parent / "celery")
GRANIAN = str(Path(sys.executable).parent / "granian")
WRK_SCRIPT = str(ROOT / "bench" / "wrk_post_contacts.lua")

sys.path.insert(0, str(ROOT))
from bench import upserts, validation  # noqa: E402
from contacts_ingest.infrastructure.local_servers import free_port  # noqa: E402
from contacts_ingest.infrastructure.scratch import (  # noqa: E402
    CLI,
    Process,
    run_id,
    scratch_database,
    scratch_prefix,
    start_process,
    wait_ready,
)
from contacts_ingest.infrastructure.settings import Settings  # noqa: E402
from contacts_ingest.producer import ContactProducer  # noqa: E402


@dataclass(frozen=True)
class Profile:
    load_seconds: int
    rates: tuple[int, ...]
    single_jobs: int
    batches: int
    naive_jobs: int
    floor_rows: int
    e2e_rate: int
    e2e_seconds: int
    drain_timeout: int


FULL = Profile(15, (250, 500, 1000, 2000, 4000), 10_000, 20, 5_000, 100_000, 1000, 60, 120)
QUICK = Profile(5, (250, 1000), 2_000, 4, 1_000, 20_000, 200, 10, 60)


class Stack:
    """A database, key prefix and queues of this run's own, and the processes on them."""

    def __init__(self) -> None:
        base = Settings()
        self.run = run_id()
        self._scratch = ExitStack()
        try:
            url = self._scratch.enter_context(
                scratch_database(
                    base.database_url, f"contacts_bench_{self.run}", admin_database="postgres"
                )
            )
            self.prefix = self._scratch.enter_context(
                scratch_prefix(base.redis_url, f"contacts-bench-{self.run}:", f"naive-{self.run}")
            )
        except BaseException:
            self._scratch.close()
            raise
        self.database_url = url.replace("postgresql+psycopg://", "postgresql://", 1)
        self.queue = f"bench-{self.run}"
        self.redis_url = base.redis_url
        self.redis = redis.Redis.from_url(base.redis_url)
        self.env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_KEY_PREFIX": self.prefix,
            "CELERY_QUEUE": self.queue,
            "RATE_LIMIT_WRITES": "1000000000",
            "LOG_LEVEL": "WARNING",
            "WORKER_METRICS_PORT": "0",
            "NAIVE_QUEUE": f"naive-{self.run}",
            "FLOOR_LIST": f"{self.prefix}floor",
        }
        self.processes: list[Process] = []
        self.pg = psycopg.connect(self.database_url, autocommit=True)

    def start(self, args: list[str], **env: str) -> Process:
        process = start_process(args, {**self.env, **env}, cwd=ROOT)
        self.processes.append(process)
        return process

    def stop(self, process: Process) -> None:
        process.stop(timeout=60)

    def key(self, user: str) -> str:
        return subprocess.run(
            [CLI, "keys", "create", "--user", user], env=self.env, capture_output=True,
            text=True, check=True,
        ).stdout.strip()  # fmt: skip

    def scalar(self, sql: str, *params: Any) -> Any:
        return self.pg.execute(sql, params).fetchone()[0]  # type: ignore[index]

    def close(self) -> None:
        for process in self.processes:
            self.stop(process)
        self.pg.close()
        self._scratch.close()


class RssSampler:
    """Peak RSS per process of some process trees, sampled every 0.5 s."""

    def __init__(self) -> None:
        self.peaks: dict[str, float] = {}
        self._trees: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def watch(self, name: str, pid: int) -> None:
        self._trees[name] = pid

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            for name, pid in list(self._trees.items()):
                try:
                    root = psutil.Process(pid)
                    members = [root, *root.children(recursive=True)]
                    peak = max(m.memory_info().rss for m in members) / 2**20
                except psutil.Error:
                    continue
                self.peaks[name] = max(self.peaks.get(name, 0.0), round(peak, 1))

    def close(self) -> None:
        self._stop.set()


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(
    url: str, key: str, seconds: int, connections: int, rate: int = 0, run: str = ""
) -> dict[str, float]:
    """Run wrk; return requests/s, p50 and p99 in ms, and non-2xx answers."""
    done = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", WRK_SCRIPT, url],
        env={**os.environ, "KEY": key, "RATE": str(rate), "CONNECTIONS": str(connections),
             "RUN": run},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    out = done.stdout

    def latency(percent: str) -> float:
        match = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", out, flags=re.M)
        return round(float(match.group(1)) * _UNITS[match.group(2)], 2) if match else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    return {
        "rps": round(float(rps.group(1)) if rps else 0.0, 1),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "requests": int(total.group(1)) if total else 0,
    }


@contextmanager
def gateway(stack: Stack, sampler: RssSampler) -> Iterator[str]:
    port = free_port()
    process = stack.start([CLI, "serve", "--port", str(port), "--workers", "2"])
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/healthz", process, ok_only=False)
    sampler.watch("gateway", process.pid)
    try:
        yield url
    finally:
        stack.stop(process)


@contextmanager
def floor(stack: Stack) -> Iterator[str]:
    port = free_port()
    process = stack.start([
        GRANIAN, "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "2", "--log-level", "warning", "bench.floor_app:app",
    ])  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, process, ok_only=False)
    try:
        yield url
    finally:
        stack.stop(process)


def bench_gateway(stack: Stack, profile: Profile, sampler: RssSampler) -> dict[str, Any]:
    key = stack.key("bench-gateway")
    result: dict[str, Any] = {"service": {}, "floor": {}}
    with gateway(stack, sampler) as url:
        wrk(url, key, 2, 16)  # warm-up
        result["service"]["saturation"] = wrk(url, key, profile.load_seconds, 32)
        for rate in profile.rates:
            result["service"][str(rate)] = wrk(url, key, profile.load_seconds, 32, rate)
    with floor(stack) as url:
        wrk(url, key, 2, 16)
        result["floor"]["saturation"] = wrk(url, key, profile.load_seconds, 32)
        for rate in profile.rates:
            result["floor"][str(rate)] = wrk(url, key, profile.load_seconds, 32, rate)
    stack.redis.delete(f"{stack.prefix}floor", f"{stack.prefix}{stack.queue}")
    return result


def drain_rate(stack: Stack, user: str, expected: int, timeout: float) -> tuple[float, int]:
    """Jobs of ``user`` per second from first start to last finish; and how many finished."""
    deadline = time.monotonic() + timeout
    while True:
        finished = stack.scalar("SELECT count(*) FROM contact_jobs WHERE user_id = %s", user)
        if finished >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    span = stack.scalar(
        "SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM contact_jobs"
        " WHERE user_id = %s",
        user,
    )
    return (round(finished / float(span), 1) if span else 0.0), int(finished)


def bench_worker(stack: Stack, profile: Profile, sampler: RssSampler) -> dict[str, Any]:
    settings = Settings(
        database_url=stack.database_url, redis_key_prefix=stack.prefix, celery_queue=stack.queue
    )
    producer = ContactProducer(settings)
    used_before = int(stack.redis.info("memory")["used_memory"])
    for i in range(profile.single_jobs):
        producer.enqueue("bench-single", {"email": f"s{i}@example.com", "firstName": "Single"})
    used_after = int(stack.redis.info("memory")["used_memory"])
    for b in range(profile.batches):
        producer.enqueue_batch(
            "bench-batch",
            [{"email": f"b{b}-{i}@example.com", "firstName": "Batch"} for i in range(1000)],
        )
    worker = stack.start([CLI, "worker", "--concurrency", "2"])
    sampler.watch("worker", worker.pid)
    single, single_done = drain_rate(stack, "bench-single", profile.single_jobs, 600)
    batch_jobs, _ = drain_rate(stack, "bench-batch", profile.batches, 600)
    stack.stop(worker)
    return {
        "single_jobs_per_s": single,
        "single_jobs_finished": single_done,
        "batch_contacts_per_s": round(batch_jobs * 1000, 1),
        "redis_bytes_per_queued_job": round((used_after - used_before) / profile.single_jobs),
    }


def bench_naive(stack: Stack, profile: Profile) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    os.environ.update(
        {k: stack.env[k] for k in ("DATABASE_URL", "REDIS_KEY_PREFIX", "NAIVE_QUEUE")}
    )
    from bench.naive import add_contact, app

    app.conf.broker_transport_options = {"global_keyprefix": stack.prefix}
    for i in range(profile.naive_jobs):
        add_contact.apply_async(("bench-naive", f"n{i}@example.com", "Naive"))
    worker = stack.start(
        [CELERY, "-A", "bench.naive", "worker", "--concurrency", "2", "--queues",
         stack.env["NAIVE_QUEUE"], "--without-gossip", "--without-mingle", "--loglevel", "WARNING"]
    )  # fmt: skip
    deadline = time.monotonic() + 600
    while (
        stack.scalar("SELECT count(*) FROM contacts WHERE user_id = 'bench-naive'")
        < profile.naive_jobs
        and time.monotonic() < deadline
    ):
        time.sleep(0.5)
    span = stack.scalar(
        "SELECT extract(epoch FROM max(created_at) - min(created_at)), count(*) FROM contacts"
        " WHERE user_id = 'bench-naive'"
    )
    count = stack.scalar("SELECT count(*) FROM contacts WHERE user_id = 'bench-naive'")
    stack.stop(worker)
    return {"jobs_per_s": round(count / float(span), 1) if span else 0.0, "finished": count}


def bench_persistence_floor(stack: Stack, profile: Profile) -> dict[str, Any]:
    now = datetime.now(UTC)
    columns = "(id, user_id, email, email_key, first_name, created_at, updated_at)"
    started = time.perf_counter()
    for start in range(0, profile.floor_rows, 500):
        rows = [
            (
                f"cnt_f{i}",
                "bench-floor",
                f"f{i}@example.com",
                f"f{i}@example.com",
                "Floor",
                now,
                now,
            )
            for i in range(start, min(start + 500, profile.floor_rows))
        ]
        values = ",".join(["(%s,%s,%s,%s,%s,%s,%s)"] * len(rows))
        with stack.pg.transaction():
            stack.pg.execute(
                f"INSERT INTO contacts {columns} VALUES {values}"  # noqa: S608 (placeholders)
                " ON CONFLICT (user_id, email_key) DO NOTHING",
                [value for row in rows for value in row],
            )
    elapsed = time.perf_counter() - started
    return {"rows_per_s": round(profile.floor_rows / elapsed, 1)}


def bench_end_to_end(stack: Stack, profile: Profile, sampler: RssSampler) -> dict[str, Any]:
    user = f"bench-e2e-{stack.run}"
    key = stack.key(user)
    worker = stack.start([CLI, "worker", "--concurrency", "2"])
    sampler.watch("worker", worker.pid)
    with gateway(stack, sampler) as url:
        load = wrk(url, key, profile.e2e_seconds, 32, profile.e2e_rate, run="e2e")
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


def ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else 0.0


def write_outputs(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    g, w, e = results["gateway"], results["worker"], results["end_to_end"]
    sat, fsat = g["service"]["saturation"], g["floor"]["saturation"]
    # 2,000/s is the target's load; a quick run's highest load stands in for it.
    top = 2000 if "2000" in g["service"] else max(int(r) for r in g["service"] if r.isdigit())
    at_top = g["service"][str(top)]
    naive, persistence = results["naive"]["jobs_per_s"], results["persistence_floor"]["rows_per_s"]
    rss = results["rss_mib"]
    rows = [
        (
            "gateway: accepted writes/s at saturation (32 connections)",
            f"{sat['rps']:,.0f}",
            f"floor (LPUSH-only app, same server): {fsat['rps']:,.0f};"
            f" ratio {ratio(sat['rps'], fsat['rps'])}",
            "≥ 5,000; ≥ 0.6 of floor",
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
        (
            "worker: single-contact jobs/s to final status",
            f"{w['single_jobs_per_s']:,.0f}",
            f"naive ORM task per contact: {naive:,.0f};"
            f" ratio {ratio(w['single_jobs_per_s'], naive)}",
            "≥ 5,000; ≥ 5x naive",
        ),
        (
            "worker: contacts/s in batch jobs",
            f"{w['batch_contacts_per_s']:,.0f}",
            f"persistence floor (multi-row INSERT, 500 per statement): {persistence:,.0f};"
            f" ratio {ratio(w['batch_contacts_per_s'], persistence)}",
            "≥ 25,000; ≥ 0.6 of floor",
        ),
        (
            f"end to end at {e['offered_per_s']:,}/s offered for {e['seconds']} s",
            f"p50 {e['p50_ms']:,} ms, p99 {e['p99_ms']:,} ms",
            f"accepted {e['accepted']:,} ({e['accepted_per_s']:,.0f}/s),"
            f" finished {e['finished']:,}",
            "p50 ≤ 25 ms, p99 ≤ 150 ms, all finished",
        ),
        (
            "peak RSS per process",
            f"gateway {rss.get('gateway', 0)} MiB, worker {rss.get('worker', 0)} MiB",
            "",
            "≤ 100 / ≤ 200 MB",
        ),
        ("Redis bytes per queued job", f"{w['redis_bytes_per_queued_job']:,}", "", "≤ 2 KiB"),
    ]
    rows += validation.rows(results["validation"])
    rows += upserts.table_rows(results)
    lines = [
        f"Measured {results['date']} on {results['machine']} ({results['mode']} run).",
        "",
        "| figure | service | baseline in the same run | target |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
    ]
    (out / "latest.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install 'contacts-ingest[bench]')")
        return
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
    figure.savefig(out / "latency.png", dpi=110)


def worker_only(profile: Profile) -> int:
    """The worker drain alone, for measuring a change to the worker before and after."""
    stack = Stack()
    sampler = RssSampler()
    try:
        figures = bench_worker(stack, profile, sampler)
        figures["upserts"] = upserts.bench_upsert_drain(stack, profile, sampler, drain_rate)
    finally:
        sampler.close()
        stack.close()
    print(json.dumps({**figures, "worker_rss_mib": sampler.peaks.get("worker")}))
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
    args = parser.parse_args()
    if args.worker_only:
        return worker_only(QUICK if args.quick else FULL)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk (or brew install wrk)")
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
        print("validation ...", flush=True)
        results["validation"] = validation.measure(args.quick)
        print("gateway and floor ...", flush=True)
        results["gateway"] = bench_gateway(stack, profile, sampler)
        print("worker drain ...", flush=True)
        results["worker"] = bench_worker(stack, profile, sampler)
        results["upserts"] = upserts.measure(stack, profile, sampler, drain_rate, quick=args.quick)
        print("naive baseline ...", flush=True)
        results["naive"] = bench_naive(stack, profile)
        print("persistence floor ...", flush=True)
        results["persistence_floor"] = bench_persistence_floor(stack, profile)
        print("end to end ...", flush=True)
        results["end_to_end"] = bench_end_to_end(stack, profile, sampler)
        results["rss_mib"] = sampler.peaks
        results["seconds"] = round(time.monotonic() - started)
    finally:
        sampler.close()
        stack.close()
    write_outputs(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
