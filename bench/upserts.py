"""The upsert figures of the benchmark, beside their create counterparts.

    python bench/upserts.py [--quick]   (these figures alone, with the create drain and
                                         floor they are compared with, as JSON)

``bench/run.py`` takes them in the same run as everything else (``measure``), and
puts them in its table (``table_rows``):

- the worker draining single-contact upserts of stored emails (each changes two
  fields), and bulk upserts (batch jobs of 1,000 stored emails);
- the upsert persistence floor: psycopg multi-row ``INSERT ... ON CONFLICT (user_id,
  email_key) DO UPDATE``, 500 rows per statement, into the same table;
- ``contacts-ingest import`` end to end, first as creates, then ``--upsert`` of the
  same emails (three columns changed or added): rows/s and the importer's peak RSS.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.report import ratio
from bench.stack import FULL, QUICK, Profile, RssSampler, Stack
from bench.worker import drain_rate, persistence_floor
from bench.worker import measure as create_drain
from contacts_ingest.infrastructure.scratch import CLI
from contacts_ingest.producer import ContactProducer

IMPORT_ROWS = {"full": 200_000, "quick": 20_000}


def seed(stack: Stack, user: str, emails: list[str]) -> None:
    """Store contacts for ``emails`` directly (COPY): the contacts upserts will find."""
    now = datetime.now(UTC)
    with (
        stack.pg.cursor() as cursor,
        cursor.copy(
            "COPY contacts (id, user_id, email, email_key, first_name, created_at, updated_at)"
            " FROM STDIN"
        ) as copy,
    ):
        for n, email in enumerate(emails):
            copy.write_row((f"cnt_{user}_{n}", user, email, email, "Seed", now, now))
    stack.pg.execute("ANALYZE contacts")


def _upserted(email: str) -> dict[str, str]:
    return {"email": email, "firstName": "Upserted", "company": "Acme"}


def bench_upsert_drain(stack: Stack, profile: Profile, sampler: RssSampler) -> dict[str, Any]:
    """The worker draining a backlog of upserts of stored emails, single and bulk."""
    singles = [f"us{i}@example.com" for i in range(profile.single_jobs)]
    batches = [[f"ub{b}-{i}@example.com" for i in range(1000)] for b in range(profile.batches)]
    seed(stack, "bench-upsert-single", singles)
    seed(stack, "bench-upsert-batch", [email for batch in batches for email in batch])
    producer = ContactProducer(stack.settings())
    for email in singles:
        producer.enqueue("bench-upsert-single", _upserted(email), upsert=True)
    for batch in batches:
        producer.enqueue_batch("bench-upsert-batch", [_upserted(e) for e in batch], upsert=True)
    worker = stack.worker(sampler)
    single, single_done = drain_rate(stack, "bench-upsert-single", len(singles), 600)
    batch_jobs, _ = drain_rate(stack, "bench-upsert-batch", len(batches), 600)
    stack.stop(worker)
    changed = stack.scalar(
        "SELECT count(*) FROM contacts WHERE user_id LIKE 'bench-upsert-%%' AND company = 'Acme'"
    )
    return {
        "single_upsert_jobs_per_s": single,
        "single_upserts_finished": single_done,
        "batch_upsert_contacts_per_s": round(batch_jobs * 1000, 1),
        "contacts_changed": changed,
    }


def bench_upsert_floor(stack: Stack, profile: Profile) -> dict[str, Any]:
    """psycopg multi-row ``INSERT ... ON CONFLICT DO UPDATE`` of stored emails, 500 rows
    per statement (each in its own transaction), changing two fields."""
    user = "bench-upsert-floor"
    emails = [f"uf{i}@example.com" for i in range(profile.floor_rows)]
    seed(stack, user, emails)
    now = datetime.now(UTC)
    columns = "(id, user_id, email, email_key, first_name, company, created_at, updated_at)"
    started = time.perf_counter()
    for start in range(0, len(emails), 500):
        chunk = emails[start : start + 500]
        rows = [
            (f"cnt_uf{start + n}", user, e, e, "Upserted", "Acme", now, now)
            for n, e in enumerate(chunk)
        ]
        values = ",".join(["(%s,%s,%s,%s,%s,%s,%s,%s)"] * len(rows))
        with stack.pg.transaction():
            stack.pg.execute(
                f"INSERT INTO contacts {columns} VALUES {values}"  # noqa: S608 (placeholders)
                " ON CONFLICT (user_id, email_key) DO UPDATE SET first_name = EXCLUDED.first_name,"
                " company = EXCLUDED.company, updated_at = EXCLUDED.updated_at",
                [value for row in rows for value in row],
            )
    elapsed = time.perf_counter() - started
    return {"rows_per_s": round(len(emails) / elapsed, 1)}


def bench_import(stack: Stack, rows: int) -> dict[str, Any]:
    """``contacts-ingest import`` of ``rows`` new contacts, then ``--upsert`` of the same
    emails, with one worker (2 processes) running: rows/s and peak RSS of each."""
    user = f"bench-import-{stack.run}"
    worker = stack.worker()
    _wait_ready(stack)
    results: dict[str, Any] = {"rows": rows}
    with tempfile.TemporaryDirectory() as folder:
        for name, header, row in (
            ("create", _CREATE_HEADER, _create_row),
            ("upsert", _UPSERT_HEADER, _upsert_row),
        ):
            path = Path(folder) / f"{name}.csv"
            with path.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(header)
                writer.writerows(row(i) for i in range(rows))
            results[name] = _timed_import(stack, path, user, upsert=name == "upsert")
    stack.stop(worker)
    results["upsert_to_create_ratio"] = round(
        results["upsert"]["rows_per_s"] / results["create"]["rows_per_s"], 2
    )
    return results


# The upsert file changes two columns and adds a third.
_CREATE_HEADER = ["email", "firstName", "lastName", "company"]
_UPSERT_HEADER = ["email", "firstName", "company", "jobTitle"]


def _create_row(i: int) -> list[str]:
    return [f"imp{i}@example.com", f"First{i}", f"Last{i}", "Initial Co"]


def _upsert_row(i: int) -> list[str]:
    return [f"imp{i}@example.com", f"Changed{i}", "Changed Co", "Engineer"]


def _wait_ready(stack: Stack) -> None:
    """Wait until the worker applies a job: its start is not part of what is measured."""
    job_id = ContactProducer(stack.settings()).enqueue("bench-warm", {"email": "w@example.com"})
    deadline = time.monotonic() + 60
    while not stack.scalar("SELECT count(*) FROM contact_jobs WHERE job_id = %s", job_id):
        if time.monotonic() > deadline:
            raise SystemExit("the worker did not start")
        time.sleep(0.1)


class _HighWaterMark:
    """The peak RSS of a running process as its kernel counts it since its exec
    (``VmHWM``), read until it exits. (``wait4``'s ``ru_maxrss`` would report this
    benchmark's own RSS instead when that is larger: a forked child starts from it.)"""

    def __init__(self, pid: int) -> None:
        self.kib = 0
        self._status = Path(f"/proc/{pid}/status")
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.wait(0.1):
            try:
                text = self._status.read_text()
            except OSError:
                return
            for line in text.splitlines():
                if line.startswith("VmHWM:"):
                    self.kib = max(self.kib, int(line.split()[1]))

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def _timed_import(stack: Stack, path: Path, user: str, *, upsert: bool) -> dict[str, Any]:
    args = [CLI, "import", str(path), "--user", user, *(["--upsert"] if upsert else [])]
    started = time.perf_counter()
    process = subprocess.Popen(
        args, env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    peak = _HighWaterMark(process.pid)
    summary = process.stdout.read()
    _, status, _ = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    peak.stop()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"import failed ({process.returncode}): {summary}")
    counts = {
        line.split()[0]: int(line.split()[1].replace(",", ""))
        for line in summary.splitlines()
        if line.split()[:1] in (["created"], ["updated"], ["failed"])
    }
    rows = sum(counts.values())
    return {
        "rows_per_s": round(rows / elapsed, 1),
        "seconds": round(elapsed, 1),
        "peak_rss_mib": round(peak.kib / 1024, 1),
        **counts,
    }


def measure(stack: Stack, profile: Profile, sampler: RssSampler, *, quick: bool) -> dict[str, Any]:
    """Every upsert figure (``bench/run.py`` calls this after the create drain)."""
    print("upserts: worker drain, floor, import ...", flush=True)
    return {
        "worker": bench_upsert_drain(stack, profile, sampler),
        "floor": bench_upsert_floor(stack, profile),
        "import": bench_import(stack, IMPORT_ROWS["quick" if quick else "full"]),
    }


def table_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The upsert rows of the benchmark table, against the create figures of the run."""
    u, w = results["upserts"], results["worker"]
    single, bulk = (
        u["worker"]["single_upsert_jobs_per_s"],
        u["worker"]["batch_upsert_contacts_per_s"],
    )
    floor, imp = u["floor"]["rows_per_s"], u["import"]
    created, upserted = imp["create"], imp["upsert"]
    return [
        (
            "worker: single-contact upsert jobs/s (stored emails, two fields changed)",
            f"{single:,.0f}",
            f"single creates: {w['single_jobs_per_s']:,.0f};"
            f" ratio {ratio(single, w['single_jobs_per_s'])}",
            "≥ 5,000; ≥ 0.8 of creates",
        ),
        (
            "worker: contacts/s in bulk upsert jobs (1,000 stored emails each)",
            f"{bulk:,.0f}",
            f"upsert floor (multi-row INSERT ... ON CONFLICT DO UPDATE, 500 per statement):"
            f" {floor:,.0f}; ratio {ratio(bulk, floor)}; bulk creates:"
            f" {w['batch_contacts_per_s']:,.0f}",
            "≥ 25,000; ≥ 0.6 of floor",
        ),
        (
            f"`contacts-ingest import --upsert`, {imp['rows']:,} rows, rows/s",
            f"{upserted['rows_per_s']:,.0f}",
            f"`import` of the same rows as creates: {created['rows_per_s']:,.0f};"
            f" ratio {imp['upsert_to_create_ratio']}",
            "≥ 10,000; ≥ 0.8 of creates",
        ),
        (
            "importer peak RSS",
            f"{upserted['peak_rss_mib']} MiB (upsert), {created['peak_rss_mib']} MiB (create)",
            "",
            "",
        ),
    ]


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description="the upsert figures and their create baselines")
    parser.add_argument("--quick", action="store_true", help="smaller and shorter")
    args = parser.parse_args()
    profile = QUICK if args.quick else FULL
    stack, sampler = Stack(), RssSampler()
    try:
        results: dict[str, Any] = {"worker": create_drain(stack, profile, sampler)}
        results["persistence_floor"] = persistence_floor(stack, profile)
        results["upserts"] = measure(stack, profile, sampler, quick=args.quick)
    finally:
        sampler.close()
        stack.close()
    print(json.dumps(results, indent=2))
    for row in table_rows(results):
        print(" | ".join(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
